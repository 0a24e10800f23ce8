/*
 * cpubench: a small, deterministic CPU benchmark for the ftvm guest.
 *
 *   usage: cpubench [-i] [SCALE]
 *
 * Two fixed workloads, each timed with clock_gettime(CLOCK_MONOTONIC):
 *
 *   int : ROUNDS x (fill a 64 KiB buffer with xorshift64* output, then run a
 *         table-driven CRC-32 and a multiply/rotate hash over it).
 *   fp  : STEPS steps of the classic 5-body planetary simulation in double
 *         precision (+, -, *, /, sqrt only; every operation is correctly
 *         rounded IEEE-754, and the build uses -ffp-contract=off, so the
 *         result is bit-identical on every conforming machine).
 *
 * SCALE (default 1) multiplies both iteration counts.  At SCALE 1 the run is
 * about 1.5 billion RV64GC instructions (int ~0.87e9, fp ~0.65e9; measured
 * with `cpubench -i` under qemu -icount shift=0).
 *
 * Expected output at SCALE 1 (identical on x86-64 built with the same flags):
 *   int checksum=72d6cff894c7c7f2
 *   fp  energy=-0.169075164->-0.169086185 checksum=fa8043ae0e8c477e
 *   total checksum=88568c569a4b808c
 *
 * -i additionally prints the number of instructions retired per part, read
 * with the rdinstret user-mode counter (needs the kernel/SBI to allow it via
 * scounteren; qemu only gives exact numbers with -icount).
 *
 * Output is one line per part plus a total; the checksums depend only on
 * SCALE, never on timing.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BUF_BYTES (64 * 1024)
#define INT_ROUNDS 1000UL  /* per unit of SCALE */
#define FP_STEPS 1000000UL /* per unit of SCALE */

static int use_instret;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t instret(void)
{
#if defined(__riscv)
    uint64_t v = 0;
    if (use_instret)
        __asm__ volatile("rdinstret %0" : "=r"(v));
    return v;
#else
    return 0;
#endif
}

/* ---------------------------------------------------------------- int --- */

static uint32_t crc_table[256];

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

static uint64_t int_work(unsigned long rounds)
{
    static uint64_t buf[BUF_BYTES / 8];
    uint64_t x = 0x9E3779B97F4A7C15ull; /* xorshift64* state */
    uint64_t acc = 0;

    crc_init();
    for (unsigned long r = 0; r < rounds; r++) {
        for (size_t i = 0; i < BUF_BYTES / 8; i++) {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            buf[i] = x * 0x2545F4914F6CDD1Dull;
        }
        const unsigned char *p = (const unsigned char *)buf;
        uint32_t crc = 0xFFFFFFFFu;
        for (size_t i = 0; i < BUF_BYTES; i++)
            crc = crc_table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
        crc ^= 0xFFFFFFFFu;

        uint64_t h = r;
        for (size_t i = 0; i < BUF_BYTES / 8; i++) {
            h ^= buf[i];
            h *= 0x100000001B3ull;
            h = (h << 31) | (h >> 33);
        }
        acc = (acc * 31 + crc) ^ h;
    }
    return acc;
}

/* ----------------------------------------------------------------- fp --- */

#define PI 3.141592653589793
#define SOLAR_MASS (4 * PI * PI)
#define DAYS_PER_YEAR 365.24
#define NBODIES 5

struct body {
    double x, y, z, vx, vy, vz, mass;
};

static void nbody_init(struct body *b)
{
    static const struct body init[NBODIES] = {
        {0, 0, 0, 0, 0, 0, SOLAR_MASS},
        {4.84143144246472090e+00, -1.16032004402742839e+00, -1.03622044471123109e-01,
         1.66007664274403694e-03 * DAYS_PER_YEAR, 7.69901118419740425e-03 * DAYS_PER_YEAR,
         -6.90460016972063023e-05 * DAYS_PER_YEAR, 9.54791938424326609e-04 * SOLAR_MASS},
        {8.34336671824457987e+00, 4.12479856412430479e+00, -4.03523417114321381e-01,
         -2.76742510726862411e-03 * DAYS_PER_YEAR, 4.99852801234917238e-03 * DAYS_PER_YEAR,
         2.30417297573763929e-05 * DAYS_PER_YEAR, 2.85885980666130812e-04 * SOLAR_MASS},
        {1.28943695621391310e+01, -1.51111514016986312e+01, -2.23307578892655734e-01,
         2.96460137564761618e-03 * DAYS_PER_YEAR, 2.37847173959480950e-03 * DAYS_PER_YEAR,
         -2.96589568540237556e-05 * DAYS_PER_YEAR, 4.36624404335156298e-05 * SOLAR_MASS},
        {1.53796971148509165e+01, -2.59193146099879641e+01, 1.79258772950371181e-01,
         2.68067772490389322e-03 * DAYS_PER_YEAR, 1.62824170038242295e-03 * DAYS_PER_YEAR,
         -9.51592254519715870e-05 * DAYS_PER_YEAR, 5.15138902046611451e-05 * SOLAR_MASS},
    };
    memcpy(b, init, sizeof(init));
    double px = 0, py = 0, pz = 0;
    for (int i = 0; i < NBODIES; i++) {
        px += b[i].vx * b[i].mass;
        py += b[i].vy * b[i].mass;
        pz += b[i].vz * b[i].mass;
    }
    b[0].vx = -px / SOLAR_MASS;
    b[0].vy = -py / SOLAR_MASS;
    b[0].vz = -pz / SOLAR_MASS;
}

static double nbody_energy(const struct body *b)
{
    double e = 0;
    for (int i = 0; i < NBODIES; i++) {
        e += 0.5 * b[i].mass * (b[i].vx * b[i].vx + b[i].vy * b[i].vy + b[i].vz * b[i].vz);
        for (int j = i + 1; j < NBODIES; j++) {
            double dx = b[i].x - b[j].x, dy = b[i].y - b[j].y, dz = b[i].z - b[j].z;
            e -= b[i].mass * b[j].mass / sqrt(dx * dx + dy * dy + dz * dz);
        }
    }
    return e;
}

static void nbody_advance(struct body *b, double dt)
{
    for (int i = 0; i < NBODIES; i++) {
        for (int j = i + 1; j < NBODIES; j++) {
            double dx = b[i].x - b[j].x, dy = b[i].y - b[j].y, dz = b[i].z - b[j].z;
            double d2 = dx * dx + dy * dy + dz * dz;
            double mag = dt / (d2 * sqrt(d2));
            b[i].vx -= dx * b[j].mass * mag;
            b[i].vy -= dy * b[j].mass * mag;
            b[i].vz -= dz * b[j].mass * mag;
            b[j].vx += dx * b[i].mass * mag;
            b[j].vy += dy * b[i].mass * mag;
            b[j].vz += dz * b[i].mass * mag;
        }
    }
    for (int i = 0; i < NBODIES; i++) {
        b[i].x += dt * b[i].vx;
        b[i].y += dt * b[i].vy;
        b[i].z += dt * b[i].vz;
    }
}

static uint64_t dbits(double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof(u));
    return u;
}

static uint64_t fp_work(unsigned long steps, double *e0, double *e1)
{
    struct body b[NBODIES];
    nbody_init(b);
    *e0 = nbody_energy(b);
    for (unsigned long s = 0; s < steps; s++)
        nbody_advance(b, 0.01);
    *e1 = nbody_energy(b);
    uint64_t h = dbits(*e1);
    for (int i = 0; i < NBODIES; i++)
        h = h * 0x100000001B3ull ^ dbits(b[i].x) ^ dbits(b[i].vy);
    return h;
}

/* --------------------------------------------------------------- main --- */

int main(int argc, char **argv)
{
    unsigned long scale = 1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-i") == 0) {
            use_instret = 1;
        } else {
            char *end;
            scale = strtoul(argv[i], &end, 10);
            if (*argv[i] == '\0' || *end != '\0' || scale == 0) {
                fprintf(stderr, "usage: %s [-i] [SCALE]\n", argv[0]);
                return 2;
            }
        }
    }

    printf("cpubench: scale=%lu\n", scale);
    fflush(stdout);

    double t0 = now();
    uint64_t i0 = instret();
    uint64_t ic = int_work(INT_ROUNDS * scale);
    uint64_t i1 = instret();
    double t1 = now();
    printf("cpubench: int rounds=%lu checksum=%016llx time=%.6fs", INT_ROUNDS * scale,
           (unsigned long long)ic, t1 - t0);
    if (use_instret)
        printf(" instret=%llu", (unsigned long long)(i1 - i0));
    printf("\n");
    fflush(stdout);

    double e0, e1;
    double t2 = now();
    uint64_t i2 = instret();
    uint64_t fc = fp_work(FP_STEPS * scale, &e0, &e1);
    uint64_t i3 = instret();
    double t3 = now();
    printf("cpubench: fp steps=%lu energy=%.9f->%.9f checksum=%016llx time=%.6fs", FP_STEPS * scale,
           e0, e1, (unsigned long long)fc, t3 - t2);
    if (use_instret)
        printf(" instret=%llu", (unsigned long long)(i3 - i2));
    printf("\n");

    printf("cpubench: total checksum=%016llx time=%.6fs\n", (unsigned long long)(ic ^ fc),
           (t1 - t0) + (t3 - t2));
    return 0;
}
