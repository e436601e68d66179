// libstdc++ functions that g++ 12's headers call but that the libstdc++ of a manylinux_2_28 system
// (GLIBCXX_3.4.24, gcc 8) does not export. Linked into every binary the `c++` wrapper of this
// folder builds, hidden, so that the binary resolves them itself and imports nothing newer.
// Each is defined as the header of g++ 12 defines it, through an entry point gcc 8 has.
// The list is what `objdump -T` of the built extension showed above GLIBCXX_3.4.24; scripts/
// manylinux_check.sh fails when a new one appears.
#include <new>
#include <sstream>

#define INFOMAX_EXT_HIDDEN __attribute__((visibility("hidden")))

namespace infomax_ext_glibcxx_compat {

// std::__throw_bad_array_new_length() (GLIBCXX_3.4.29): std::allocator<T>::allocate's error when
// n * sizeof(T) overflows.
[[noreturn]] INFOMAX_EXT_HIDDEN void throw_bad_array_new_length()
    __asm__("_ZSt28__throw_bad_array_new_lengthv");
void throw_bad_array_new_length() { throw std::bad_array_new_length(); }

// The default constructors of std::ostringstream and std::stringstream (GLIBCXX_3.4.26; older
// libraries have only the openmode constructor, which the default one calls with these modes).
// Complete-object constructors (C1): `self` is uninitialised storage for the whole object.
INFOMAX_EXT_HIDDEN void construct_ostringstream(std::ostringstream* self)
    __asm__("_ZNSt7__cxx1119basic_ostringstreamIcSt11char_traitsIcESaIcEEC1Ev");
void construct_ostringstream(std::ostringstream* self) {
  ::new (static_cast<void*>(self)) std::ostringstream(std::ios_base::out);
}

INFOMAX_EXT_HIDDEN void construct_stringstream(std::stringstream* self)
    __asm__("_ZNSt7__cxx1118basic_stringstreamIcSt11char_traitsIcESaIcEEC1Ev");
void construct_stringstream(std::stringstream* self) {
  ::new (static_cast<void*>(self)) std::stringstream(std::ios_base::out | std::ios_base::in);
}

}  // namespace infomax_ext_glibcxx_compat
