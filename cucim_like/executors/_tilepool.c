/* Native JPEG tile batches for the CPU executor: one call decodes a read's JPEG tiles (whole or cropped) and
 * copies the needed part of each into the output, on the calling thread plus a small pool of native threads.
 *
 * Why: a small read (a 224x224 patch touches 1-4 tiles) spends as much in Python and in handing tiles between
 * Python threads (GIL hand-offs, wake-ups, interpreter state moving between cores) as the second core gains.
 * Here one ctypes call releases the GIL once per read; helper threads spin for a short while after a batch so
 * the next read finds them awake.
 *
 * The TurboJPEG 3 functions come as addresses from Python (the library cucim_like already loads with ctypes),
 * so this file needs no TurboJPEG header and links to nothing but libc and pthreads. Plain C: loaded with
 * ctypes, no Python API. Any job this code cannot or will not do gets a non-zero status; Python then decodes
 * that tile on its own path, which raises the typed error for a damaged stream.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

/* ---- TurboJPEG 3 (turbojpeg.h), by address ---- */
typedef void *tjhandle;
typedef struct { int x, y, w, h; } tjregion;
enum { TJINIT_DECOMPRESS = 1 };
enum { TJPARAM_SUBSAMP = 4, TJPARAM_JPEGWIDTH = 5, TJPARAM_JPEGHEIGHT = 6, TJPARAM_PRECISION = 7,
       TJPARAM_COLORSPACE = 8, TJPARAM_SCANLIMIT = 13, TJPARAM_LOSSLESS = 15 };
enum { TJPF_RGB = 0, TJPF_GRAY = 6 };

static tjhandle (*tj_init)(int);
static void (*tj_destroy)(tjhandle);
static int (*tj_set)(tjhandle, int, int);
static int (*tj_get)(tjhandle, int);
static int (*tj_header)(tjhandle, const unsigned char *, size_t);
static int (*tj_crop)(tjhandle, tjregion);
static int (*tj_decompress8)(tjhandle, const unsigned char *, size_t, unsigned char *, int, int);

/* iMCU width per TJSAMP (444, 422, 420, GRAY, 440, 411, 441), and the crop cost rule: both given by Python
 * (cucim_like/codecs/turbojpeg.py _MCU_WIDTH, cucim_like/codecs/jpeg.py CROP_COST and _WHOLE_COST) */
static int MCU_WIDTH[7];
static double COST_FIXED, COST_SKIPPED, COST_KEPT, COST_LEAST_WIDTH, WHOLE_COST;

/* ---- one job: a tile's stream and the parts of it to place (several when patches of a batch share it) ---- */
typedef struct {
    unsigned char *dst;       /* output pixel of tile row y0, column x0 */
    int64_t pitch;            /* bytes between output rows */
    int32_t y0, y1, x0, x1;   /* the tile's rows and columns to place */
} place_t;

typedef struct {
    const unsigned char *src; /* complete JPEG stream */
    int64_t src_len;
    place_t *places;
    int64_t nplaces;
    unsigned char *tile_out;  /* NULL, or a C-contiguous tile (tile_h x tile_w x samples) to decode whole into */
    int32_t tile_w, tile_h;   /* the tile's frame: width must match, height at most this (short last strips) */
    int32_t samples;          /* 1 (gray) or 3 (RGB) */
    int32_t status;           /* out: 0 done; 1 declined (not for this path); 2 TurboJPEG failed */
    int32_t cropped;          /* out: 1 when only a part of the tile was decoded */
    int32_t reserved;
} job_t;

enum { JOB_OK = 0, JOB_DECLINED = 1, JOB_FAILED = 2 };

/* Cost of a cropped decode against a whole one (cucim_like/codecs/jpeg.py, _crop_cost) */
static double crop_cost(int y0, int y1, double width_fraction, int height) {
    double wf = width_fraction > COST_LEAST_WIDTH ? width_fraction : COST_LEAST_WIDTH;
    return COST_FIXED + (COST_SKIPPED * y1 + COST_KEPT * (y1 - y0) * wf) / height;
}

/* Per-thread scratch for decoded regions, 16 bytes past a 64-byte boundary (libjpeg-turbo writes slower
 * into 32-byte aligned rows; see cucim_like/memory.py) */
static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;
typedef struct { unsigned char *base; size_t cap; } scratch_t;

static void scratch_free(void *p) {
    scratch_t *s = p;
    if (s) { free(s->base); free(s); }
}
static void scratch_key_make(void) { pthread_key_create(&scratch_key, scratch_free); }

static unsigned char *scratch_get(size_t n) {
    pthread_once(&scratch_once, scratch_key_make);
    scratch_t *s = pthread_getspecific(scratch_key);
    if (!s) {
        s = calloc(1, sizeof *s);
        if (!s) return NULL;
        pthread_setspecific(scratch_key, s);
    }
    if (s->cap < n) {
        free(s->base);
        s->base = NULL;
        s->cap = 0;
        if (posix_memalign((void **)&s->base, 64, n + 64) != 0) { s->base = NULL; return NULL; }
        s->cap = n;
    }
    return s->base + 16;
}

static void copy_rows(unsigned char *dst, int64_t dst_pitch, const unsigned char *src, int64_t src_pitch,
                      int rows, size_t row_bytes) {
    for (int r = 0; r < rows; r++) memcpy(dst + r * dst_pitch, src + r * src_pitch, row_bytes);
}

static int run_job(job_t *j) {
    j->cropped = 0;
    const int tw = j->tile_w, th = j->tile_h, s = j->samples;
    if ((s != 1 && s != 3) || j->src_len <= 0 || j->nplaces <= 0) return JOB_DECLINED;
    int y0 = th, y1 = 0, x0 = tw, x1 = 0; /* the union of the parts */
    for (int64_t k = 0; k < j->nplaces; k++) {
        const place_t *p = &j->places[k];
        if (p->y0 < 0 || p->y1 <= p->y0 || p->x0 < 0 || p->x1 <= p->x0 || p->x1 > tw || p->y1 > th)
            return JOB_DECLINED;
        if (p->y0 < y0) y0 = p->y0;
        if (p->y1 > y1) y1 = p->y1;
        if (p->x0 < x0) x0 = p->x0;
        if (p->x1 > x1) x1 = p->x1;
    }
    tjhandle h = tj_init(TJINIT_DECOMPRESS); /* fresh per stream: no tables carried over from another one */
    if (!h) return JOB_FAILED;
    int status = JOB_DECLINED;
    tj_set(h, TJPARAM_SCANLIMIT, 500);
    if (tj_header(h, j->src, (size_t)j->src_len) != 0) goto done;
    int height = tj_get(h, TJPARAM_JPEGHEIGHT), width = tj_get(h, TJPARAM_JPEGWIDTH);
    int sub = tj_get(h, TJPARAM_SUBSAMP), cs = tj_get(h, TJPARAM_COLORSPACE);
    if (width != tw || height < y1 || height > th || tj_get(h, TJPARAM_PRECISION) != 8
        || tj_get(h, TJPARAM_LOSSLESS) != 0)
        goto done;
    if (s == 3 ? (cs != 0 && cs != 1) : cs != 2) goto done; /* TJCS_RGB/YCbCr for RGB, TJCS_GRAY for gray */
    const int pf = s == 3 ? TJPF_RGB : TJPF_GRAY;
    /* Decode the whole tile into the caller's tile (kept by the tile cache), or crop to the rows and columns
     * needed when that pays: the left edge on an iMCU column, a margin of at least one column on each cut
     * side (edge columns are upsampled without their outer neighbour). */
    int left = 0, right = width, top = 0, bottom = height, cropped = 0;
    int mcu = (sub >= 0 && sub < 7) ? MCU_WIDTH[sub] : 0;
    if (j->tile_out) {
        if (height != th) goto done;
    } else if (mcu && !(y0 == 0 && x0 == 0 && y1 == height && x1 == width)
               && crop_cost(y0, y1, (double)(x1 - x0) / width, th) < WHOLE_COST) {
        int l = x0 > 0 ? (x0 - 1) / mcu * mcu : 0;
        int r = x1 < width ? (x1 + mcu < width ? x1 + mcu : width) : width;
        if ((r - l) * 4 > width * 3) { l = 0; r = width; }
        if (crop_cost(y0, y1, (double)(r - l) / width, th) < WHOLE_COST) {
            left = l; right = r; top = y0; bottom = y1; cropped = 1;
        }
    }
    const int w = right - left, rows = bottom - top;
    unsigned char *buf = j->tile_out ? j->tile_out : scratch_get((size_t)w * rows * s);
    if (!buf) { status = JOB_FAILED; goto done; }
    if (cropped && !(left == 0 && right == width && top == 0 && bottom == height)) {
        tjregion r = {left, top, w, rows};
        if (tj_crop(h, r) != 0) goto done; /* declined: Python decodes it */
    }
    if (tj_decompress8(h, j->src, (size_t)j->src_len, buf, w * s, pf) != 0) {
        status = JOB_FAILED;
        goto done;
    }
    for (int64_t k = 0; k < j->nplaces; k++) {
        const place_t *p = &j->places[k];
        copy_rows(p->dst, p->pitch, buf + ((size_t)(p->y0 - top) * w + (p->x0 - left)) * s, (int64_t)w * s,
                  p->y1 - p->y0, (size_t)(p->x1 - p->x0) * s);
    }
    j->cropped = cropped;
    status = JOB_OK;
done:
    tj_destroy(h);
    return status;
}

/* ---- the pool: helpers take jobs of the open batch from a shared cursor, the caller too ---- */
static pthread_mutex_t pool_owner = PTHREAD_MUTEX_INITIALIZER; /* one batch at a time uses the helpers */
static pthread_mutex_t sleep_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t work_cv = PTHREAD_COND_INITIALIZER;
static pthread_cond_t done_cv = PTHREAD_COND_INITIALIZER;

static job_t *batch_jobs;
static int batch_n, batch_helpers;
static atomic_int batch_next, batch_done, batch_open, helpers_busy, sleepers, waiter;
static atomic_uint batch_id;
static int helpers_started;
static atomic_long spin_ns = 200000; /* a helper stays awake this long after its last job */

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void finish_one(void) {
    if (atomic_fetch_add(&batch_done, 1) + 1 == batch_n && atomic_load(&waiter)) {
        pthread_mutex_lock(&sleep_lock);
        pthread_cond_broadcast(&done_cv);
        pthread_mutex_unlock(&sleep_lock);
    }
}

static void take_jobs(void) {
    for (;;) {
        int i = atomic_fetch_add(&batch_next, 1);
        if (i >= batch_n) return;
        batch_jobs[i].status = run_job(&batch_jobs[i]);
        finish_one();
    }
}

static void *helper_main(void *arg) {
    const int index = (int)(intptr_t)arg;
    unsigned seen = atomic_load(&batch_id);
    for (;;) {
        /* wait for a new batch: spin a while, then sleep */
        int64_t until = now_ns() + atomic_load(&spin_ns);
        unsigned id;
        int spins = 0;
        while ((id = atomic_load(&batch_id)) == seen) {
            CPU_RELAX();
            if (++spins % 64 == 0 && now_ns() > until) break;
        }
        if (id == seen) {
            pthread_mutex_lock(&sleep_lock);
            atomic_fetch_add(&sleepers, 1);
            while ((id = atomic_load(&batch_id)) == seen) pthread_cond_wait(&work_cv, &sleep_lock);
            atomic_fetch_sub(&sleepers, 1);
            pthread_mutex_unlock(&sleep_lock);
        }
        seen = id;
        atomic_fetch_add(&helpers_busy, 1);
        if (atomic_load(&batch_open) && atomic_load(&batch_id) == id && index < batch_helpers) take_jobs();
        atomic_fetch_sub(&helpers_busy, 1);
    }
    return NULL;
}

static void reset_after_fork(void) {
    /* the child has none of the parent's threads; locks may have been held by one of them */
    pthread_mutex_init(&pool_owner, NULL);
    pthread_mutex_init(&sleep_lock, NULL);
    pthread_cond_init(&work_cv, NULL);
    pthread_cond_init(&done_cv, NULL);
    helpers_started = 0;
    atomic_store(&batch_open, 0);
    atomic_store(&helpers_busy, 0);
    atomic_store(&sleepers, 0);
    atomic_store(&waiter, 0);
}

static pthread_once_t fork_once = PTHREAD_ONCE_INIT;
static void register_fork(void) { pthread_atfork(NULL, NULL, reset_after_fork); }

/* Set the TurboJPEG 3 function addresses (in the order below), the 7 iMCU widths and the 5 crop cost numbers
 * (fixed, skipped, kept, least width fraction, whole); returns 0. */
int tilepool_init(void **fns, const int *mcu_widths, const double *costs, long spin_microseconds) {
    for (int i = 0; i < 7; i++) MCU_WIDTH[i] = mcu_widths[i];
    COST_FIXED = costs[0];
    COST_SKIPPED = costs[1];
    COST_KEPT = costs[2];
    COST_LEAST_WIDTH = costs[3];
    WHOLE_COST = costs[4];
    tj_init = (tjhandle(*)(int))fns[0];
    tj_destroy = (void (*)(tjhandle))fns[1];
    tj_set = (int (*)(tjhandle, int, int))fns[2];
    tj_get = (int (*)(tjhandle, int))fns[3];
    tj_header = (int (*)(tjhandle, const unsigned char *, size_t))fns[4];
    tj_crop = (int (*)(tjhandle, tjregion))fns[5];
    tj_decompress8 = (int (*)(tjhandle, const unsigned char *, size_t, unsigned char *, int, int))fns[6];
    if (spin_microseconds >= 0) atomic_store(&spin_ns, spin_microseconds * 1000);
    pthread_once(&fork_once, register_fork);
    return 0;
}

size_t tilepool_job_size(void) { return sizeof(job_t); }

/* Run ``n`` jobs with up to ``threads`` threads (the caller and threads - 1 helpers); returns the number of
 * jobs whose status is not 0. When another batch holds the helpers, the caller runs its jobs alone. */
int tilepool_run(job_t *jobs, int n, int threads) {
    int want = threads - 1 < n - 1 ? threads - 1 : n - 1;
    if (want > 0 && pthread_mutex_trylock(&pool_owner) == 0) {
        while (helpers_started < want) {
            pthread_t t;
            pthread_attr_t attr;
            pthread_attr_init(&attr);
            pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
            pthread_attr_setstacksize(&attr, 256 << 10);
            int rc = pthread_create(&t, &attr, helper_main, (void *)(intptr_t)helpers_started);
            pthread_attr_destroy(&attr);
            if (rc != 0) break;
            helpers_started++;
        }
        if (want > helpers_started) want = helpers_started;
        batch_jobs = jobs;
        batch_n = n;
        batch_helpers = want;
        atomic_store(&batch_done, 0);
        atomic_store(&batch_next, 0);
        atomic_store(&batch_open, 1);
        atomic_fetch_add(&batch_id, 1);
        if (atomic_load(&sleepers) > 0) {
            pthread_mutex_lock(&sleep_lock);
            pthread_cond_broadcast(&work_cv);
            pthread_mutex_unlock(&sleep_lock);
        }
        take_jobs();
        /* the helpers' last jobs: spin briefly, then sleep until the last one signals */
        int64_t until = now_ns() + 50000;
        int spins = 0;
        while (atomic_load(&batch_done) < n) {
            CPU_RELAX();
            if (++spins % 64 == 0 && now_ns() > until) {
                pthread_mutex_lock(&sleep_lock);
                atomic_store(&waiter, 1);
                while (atomic_load(&batch_done) < n) pthread_cond_wait(&done_cv, &sleep_lock);
                atomic_store(&waiter, 0);
                pthread_mutex_unlock(&sleep_lock);
            }
        }
        /* close the batch and let any helper that looked at it leave before the jobs go away */
        atomic_store(&batch_open, 0);
        while (atomic_load(&helpers_busy) > 0) CPU_RELAX();
        pthread_mutex_unlock(&pool_owner);
    } else {
        for (int i = 0; i < n; i++) jobs[i].status = run_job(&jobs[i]);
    }
    int bad = 0;
    for (int i = 0; i < n; i++) bad += jobs[i].status != 0;
    return bad;
}
