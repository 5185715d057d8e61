// Readable C++ type names for error messages ("std::vector<int>", not a mangled name).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <typeinfo>
#include <unordered_map>
#include <utility>
#include <vector>

#include <crew/buffer.hpp>

namespace crew::inline v0::detail {

/// The demangled name of a type_info (the mangled one if demangling fails).
std::string demangle(const std::type_info& type);

template <class T>
struct TypeName {
  static std::string get() { return demangle(typeid(T)); }
};
template <class T>
std::string type_name() {
  return TypeName<T>::get();
}

#define CREW_DETAIL_TYPE_NAME(T, text)        \
  template <>                                 \
  struct TypeName<T> {                        \
    static std::string get() { return text; } \
  };
CREW_DETAIL_TYPE_NAME(void, "void")
CREW_DETAIL_TYPE_NAME(bool, "bool")
CREW_DETAIL_TYPE_NAME(char, "char")
CREW_DETAIL_TYPE_NAME(std::int8_t, "int8_t")
CREW_DETAIL_TYPE_NAME(std::uint8_t, "uint8_t")
CREW_DETAIL_TYPE_NAME(short, "short")
CREW_DETAIL_TYPE_NAME(unsigned short, "unsigned short")
CREW_DETAIL_TYPE_NAME(int, "int")
CREW_DETAIL_TYPE_NAME(unsigned, "unsigned")
CREW_DETAIL_TYPE_NAME(long, "long")
CREW_DETAIL_TYPE_NAME(unsigned long, "unsigned long")
CREW_DETAIL_TYPE_NAME(long long, "long long")
CREW_DETAIL_TYPE_NAME(unsigned long long, "unsigned long long")
CREW_DETAIL_TYPE_NAME(float, "float")
CREW_DETAIL_TYPE_NAME(double, "double")
CREW_DETAIL_TYPE_NAME(std::string, "std::string")
CREW_DETAIL_TYPE_NAME(const char*, "const char*")
CREW_DETAIL_TYPE_NAME(crew::Buffer, "crew::Buffer")
#undef CREW_DETAIL_TYPE_NAME

template <std::size_t N>
struct TypeName<char[N]> {
  static std::string get() { return "const char*"; }
};
template <class T>
struct TypeName<std::vector<T>> {
  static std::string get() { return "std::vector<" + type_name<T>() + ">"; }
};
template <class T>
struct TypeName<std::optional<T>> {
  static std::string get() { return "std::optional<" + type_name<T>() + ">"; }
};
template <class K, class V>
struct TypeName<std::map<K, V>> {
  static std::string get() { return "std::map<" + type_name<K>() + ", " + type_name<V>() + ">"; }
};
template <class K, class V>
struct TypeName<std::unordered_map<K, V>> {
  static std::string get() {
    return "std::unordered_map<" + type_name<K>() + ", " + type_name<V>() + ">";
  }
};
template <class A, class B>
struct TypeName<std::pair<A, B>> {
  static std::string get() { return "std::pair<" + type_name<A>() + ", " + type_name<B>() + ">"; }
};

/// "int, std::string" for <int, std::string>; "" for none.
template <class... T>
std::string type_list() {
  std::string out;
  ((out += (out.empty() ? "" : ", ") + type_name<T>()), ...);
  return out;
}

}  // namespace crew::inline v0::detail
