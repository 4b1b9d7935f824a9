// fs.h — file-system helpers more than one part needs. Thread-safe; errno says why on failure.
#ifndef UTIL_FS_H
#define UTIL_FS_H

// Creates dir and every missing parent (mode 0755), like `mkdir -p`; an existing folder is fine.
// Returns 0, or -1 with errno set (a path longer than PATH_MAX: ENAMETOOLONG).
int fs_mkdir_p(const char *dir);

#endif
