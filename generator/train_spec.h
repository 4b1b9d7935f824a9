// train_spec.h — a job spec (the JSON object of docs/jobs.md, what `steer worker` reads from
// DIR/spec.json and `steer serve` checks at submission) as a TrainSpec (train.h). Every key is
// checked for its type and range here; unknown keys are refused. Not here: where the run's files
// go and whether it resumes (the worker decides from its folder), and the users' reward of a
// finetune job (the worker builds it from `store`, server/learn.h).
#ifndef GENERATOR_TRAIN_SPEC_H
#define GENERATOR_TRAIN_SPEC_H

#include <jansson.h>
#include <stddef.h>

#include "generator/train.h"

// Every key a spec may hold, NULL-terminated: the run's, and the server's own "promote" and
// "fd_margin" (accepted here, read by server/jobs.c).
extern const char *const TRAIN_SPEC_KEYS[];

// Fills s (from train_spec_default, with the spec's keys over it; strings borrowed from spec,
// which must outlive s) and *store (finetune: the path of the users' feedback; else NULL).
// Returns 0, or -1 with err (errlen bytes) saying which key is wrong and why.
int train_spec_from_json(TrainSpec *s, const json_t *spec, const char **store, char *err,
                         size_t errlen);

#endif
