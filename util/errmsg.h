// errmsg.h — the one formatter of error messages: every function that fails with a code and a
// message in the caller's (err, errlen) buffer writes it through errmsg_set, so a failure is one
// line: `return errmsg_set(err, errlen, CODE, "%s: ...", path);`. Thread-safe, allocates nothing.
#ifndef UTIL_ERRMSG_H
#define UTIL_ERRMSG_H

#include <stddef.h>

// Formats the message into err (errlen bytes, always terminated; err NULL or errlen 0: nothing
// written) and returns code.
int errmsg_set(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
