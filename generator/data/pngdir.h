// pngdir.h — more image datasets: every PNG of a folder (emoji, a photo set, any small images), a
// subset of a loaded dataset (some classes, the first n images), for transfer learning onto a
// small new dataset, and dataset_load, the one way training reads its data (Fashion-MNIST or a
// PNG folder, then the subset). Same Dataset as Fashion-MNIST (generator/data/fmnist.h): (n, c,
// h, w) in [-1, 1].
#ifndef GENERATOR_DATA_PNGDIR_H
#define GENERATOR_DATA_PNGDIR_H

#include <stddef.h>

#include "generator/data/fmnist.h"

// Loads every *.png of dir (sorted by name; at most limit of them when limit > 0) as c x h x w
// images (c = 1: luminance, 3: RGB): decoded with libpng to RGBA, composited over black (transparent
// pixels become -1, as Fashion-MNIST's background), resized to h x w by averaging the source pixels
// each target pixel covers (area resampling; exact for integer factors such as 64 -> 32), scaled to
// [-1, 1]. No labels (n_classes 0). Returns 0, or a FMNIST_E* code with err set.
int pngdir_load(Dataset *d, const char *dir, int c, int h, int w, long limit, char *err,
                size_t errlen);

// Keeps, in order, the images whose label is in classes (n_cls of them; 0 = every class), at most
// limit (> 0) of them. The dataset shrinks in place. Returns 0, or FMNIST_EINVAL with err set when
// nothing is left.
int dataset_subset(Dataset *d, const int *classes, int n_cls, long limit, char *err, size_t errlen);

// Whether dir holds Fashion-MNIST's IDX files (train-images-idx3-ubyte.gz readable).
int dataset_is_fmnist(const char *dir);

// A training run's data: Fashion-MNIST's train (train = 1) or test split when dir holds it, else
// every PNG of dir at c x h x w (pngdir_load; the same for both splits); then the images whose
// label is in classes (n_cls of them; 0 = all), and for the train split at most limit (> 0) of
// them. Returns 0, or a FMNIST_E* code with err set (a folder that does not exist: FMNIST_ENOENT,
// the message saying what a data folder holds).
int dataset_load(Dataset *d, const char *dir, int train, int c, int h, int w, const int *classes,
                 int n_cls, long limit, char *err, size_t errlen);

#endif
