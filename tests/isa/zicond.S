/* Zicond (RV64): czero.eqz and czero.nez. QEMU 7.2 has no Zicond: checked against an
 * independent model (Python) only. */
#include "test.h"
#include "bitmanip.h"

TEST_BEGIN
        TEST_RR(1, x_czero_eqz, 0x0, 0x0, 0x8000000000000000)
        TEST_RR(2, x_czero_eqz, 0x1, 0x1, 0xffffffff)
        TEST_RR(3, x_czero_eqz, 0x0, 0xffffffffffffffff, 0x0)
        TEST_RR(4, x_czero_eqz, 0x8000000000000000, 0x8000000000000000, 0x123456789abcdef0)
        TEST_RR(5, x_czero_eqz, 0x7fffffffffffffff, 0x7fffffffffffffff, 0x40)
        TEST_RR(6, x_czero_eqz, 0x0, 0x1234, 0x0)
        TEST_RR(7, x_czero_eqz, 0x1234, 0x1234, 0x5)
        TEST_RR(8, x_czero_nez, 0x0, 0x0, 0x8000000000000000)
        TEST_RR(9, x_czero_nez, 0x0, 0x1, 0xffffffff)
        TEST_RR(10, x_czero_nez, 0xffffffffffffffff, 0xffffffffffffffff, 0x0)
        TEST_RR(11, x_czero_nez, 0x0, 0x8000000000000000, 0x123456789abcdef0)
        TEST_RR(12, x_czero_nez, 0x0, 0x7fffffffffffffff, 0x40)
        TEST_RR(13, x_czero_nez, 0x1234, 0x1234, 0x0)
        TEST_RR(14, x_czero_nez, 0x0, 0x1234, 0x5)
TEST_END

