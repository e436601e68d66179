// glibc 2.28 has no <sys/single_threaded.h> (it came in 2.32). libstdc++'s headers include it when
// it exists and then read `__libc_single_threaded` (a GLIBC_2.32 symbol) to skip atomic reference
// counts in single-threaded processes. This stand-in makes the answer "not single-threaded": atomic
// counts always, which is what glibc 2.28 gives libstdc++ in any process that has loaded libpthread
// (every process with torch).
#pragma once
static constexpr char __libc_single_threaded = 0;
