// fmnist.h — Fashion-MNIST (Xiao et al. 2017) from Debian's dataset-fashion-mnist, as float images.
//
// The IDX files (gzip) hold 28x28 grayscale u8 images and u8 labels 0..9. fmnist_load pads each
// image to 32x32 (2 pixels of black on every side, what the fmnist32 networks expect) and scales it
// to [-1, 1] as x / 127.5 - 1, so black is -1 and white is 1.
//
// Dataset is the in-memory form every image dataset in steer takes; it is owned by the caller's
// struct and released by dataset_free.
#ifndef GENERATOR_DATA_FMNIST_H
#define GENERATOR_DATA_FMNIST_H

#include <stddef.h>
#include <stdint.h>

#define FMNIST_ERRNO_MAP(X)                                                                        \
    X(ENOENT, -1, "dataset file not found")                                                        \
    X(EIO, -2, "could not read the dataset file")                                                  \
    X(EFORMAT, -3, "dataset file is damaged or not IDX")                                           \
    X(ENOMEM, -4, "out of memory")                                                                 \
    X(EINVAL, -5, "invalid argument")

enum {
#define X(name, code, msg) FMNIST_##name = code,
    FMNIST_ERRNO_MAP(X)
#undef X
};

// A static string for a FMNIST_E* code (never NULL).
const char *fmnist_strerror(int code);

#define FMNIST_DIR "/usr/share/datasets/fashion-mnist"
#define FMNIST_CLASSES 10
#define FMNIST_SIZE 32     // side of the padded images
#define FMNIST_RAW_SIZE 28 // side of the images in the files
#define FMNIST_TRAIN_N 60000
#define FMNIST_TEST_N 10000

// "T-shirt/top", "Trouser", ..., "Ankle boot", indexed by label.
extern const char *const fmnist_class_names[FMNIST_CLASSES];

typedef struct {
    int n, c, h, w;
    float *images;   // (n, c, h, w), values in [-1, 1]
    int32_t *labels; // (n), each in 0 .. n_classes-1
    int n_classes;
    const char *const *class_names; // (n_classes) static strings, or NULL when unnamed
} Dataset;

// Loads the training set (train = 1: train-*-ubyte.gz, 60000 images) or the test set (train = 0:
// t10k-*-ubyte.gz, 10000 images) from dir (FMNIST_DIR for Debian's package) into d, padded to
// 1x32x32. Returns 0, or a FMNIST_E* code with d left empty and err naming the file and the
// problem; a missing file's message says how to install the package. Thread-safe (no globals).
int fmnist_load(Dataset *d, const char *dir, int train, char *err, size_t errlen);

// Releases what d owns and zeroes it. Safe on a zeroed, half-loaded or already freed struct.
void dataset_free(Dataset *d);

#endif
