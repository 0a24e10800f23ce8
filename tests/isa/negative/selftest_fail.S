/* Negative self-test: must FAIL at case 3 (exit status 3). Checks that the
 * runner really reports failures and their case numbers. */
#include "test.h"
TEST_BEGIN
        TEST_CASE(1, a0, 5, li a0, 5)
        TEST_CASE(2, a0, 7, addi a0, a0, 2)
        TEST_CASE(3, a0, 8, addi a0, a0, 2)     /* 9 != 8: fails here */
        TEST_CASE(4, a0, 9, nop)
TEST_END
