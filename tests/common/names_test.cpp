#include "despool/common/names.h"

#include <gtest/gtest.h>

namespace despool {
namespace {

TEST(NamesTest, PackageIdAcceptsContractCharset) {
  EXPECT_TRUE(ValidatePackageId("office-2024_x64.v2").ok());
  EXPECT_TRUE(ValidatePackageId(std::string(64, 'a')).ok());
}

TEST(NamesTest, PackageIdRejectsBadForms) {
  EXPECT_FALSE(ValidatePackageId("").ok());
  EXPECT_FALSE(ValidatePackageId(".").ok());
  EXPECT_FALSE(ValidatePackageId("..").ok());
  EXPECT_FALSE(ValidatePackageId("-lead").ok());
  EXPECT_FALSE(ValidatePackageId("a/b").ok());
  EXPECT_FALSE(ValidatePackageId(std::string(65, 'a')).ok());
  auto st = ValidatePackageId("a b");
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("'a b'"), std::string::npos) << st.error().message;
}

TEST(NamesTest, JobIdCharset) {
  EXPECT_TRUE(ValidateJobId("0194-abc-DEF").ok());
  EXPECT_FALSE(ValidateJobId("a_b").ok());
  EXPECT_FALSE(ValidateJobId(std::string(65, '1')).ok());
}

TEST(NamesTest, VersionUpTo2Pow53Minus1) {
  EXPECT_TRUE(ValidateVersion(kMaxVersion).ok());
  EXPECT_FALSE(ValidateVersion(kMaxVersion + 1).ok());
}

TEST(NamesTest, Paths) {
  EXPECT_TRUE(ValidateSourcePath("/srv/src/pkg").ok());
  EXPECT_FALSE(ValidateSourcePath("rel/path").ok());
  EXPECT_FALSE(ValidateSourcePath("/srv/../etc").ok());
  EXPECT_TRUE(ValidateRelativePath("bin/tool.exe").ok());
  EXPECT_FALSE(ValidateRelativePath("/etc/passwd").ok());
  EXPECT_FALSE(ValidateRelativePath("a/../../b").ok());
  EXPECT_FALSE(ValidateRelativePath("a//b").ok());
  EXPECT_FALSE(ValidateRelativePath(std::string("a\0b", 3)).ok());
}

}  // namespace
}  // namespace despool
