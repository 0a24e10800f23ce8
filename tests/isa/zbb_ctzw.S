/* ctzw of a value whose low word is zero and whose high word is not: 32 (the count stays in
 * the low word). QEMU 7.2 returns 63 for 0x8000000000000000, so qemu-check.sh skips this file. */
#include "test.h"
#include "bitmanip.h"

TEST_BEGIN
        TEST_RI(1, x_ctzw, 0x20, 0x8000000000000000, 0)
        TEST_RI(2, x_ctzw, 0x20, 0xffffffff00000000, 0)
        TEST_RI(3, x_ctzw, 0x20, 0x100000000, 0)
        TEST_RI(4, x_clzw, 0x20, 0xffffffff00000000, 0)
        TEST_RI(5, x_cpopw, 0x0, 0xffffffff00000000, 0)
TEST_END
