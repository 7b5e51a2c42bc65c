// Reads and checks the fields of an artifact's manifest.json (format: runtime/artifact.py) that the C++
// sampler needs, and verifies the step library's sha256 before anything loads it: a compiled library is
// native code, and loading it runs that code. JSON comes from tvm-ffi's own parser (tvm/ffi/extra/json.h).
#pragma once

#include <sys/stat.h>
#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/string.h>

#include <cmath>
#include <fstream>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "sde.h"
#include "sha256.h"

namespace gencc {

// Bad input: a malformed or unsupported artifact, a file that fails its hash, a bad argument. Exit status 2.
struct InputError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Artifact {
  std::string root;
  std::vector<int64_t> sample_shape;   // one sample
  int64_t sample_size = 1;             // elements per sample
  std::vector<float> shift, scale;     // data = model * scale + shift; one value, or one per element
  VPSDE sde{};
  std::string step_library;            // absolute-free file name inside root, hash-checked
  std::string step_sha256;
};

namespace detail {

namespace ffi = tvm::ffi;
using Object = ffi::Map<ffi::Any, ffi::Any>;

constexpr int64_t kMaxManifestBytes = 1 << 20;
constexpr int64_t kMaxDim = 1 << 16;
constexpr int64_t kMaxElements = 1 << 24;   // per sample, as runtime/artifact.py

inline void expect(bool ok, const std::string& message) {
  if (!ok) throw InputError(message);
}

// A short, one-line rendering of a JSON value for error messages.
inline std::string show(const ffi::Any& v) {
  std::string s = ffi::json::Stringify(v).operator std::string();
  return s.size() > 60 ? s.substr(0, 57) + "..." : s;
}

inline std::optional<ffi::Any> field(const Object& obj, const char* key) {
  auto it = obj.find(ffi::String(key));
  if (it == obj.end()) return std::nullopt;
  return (*it).second;
}

inline std::optional<std::string> as_string(const std::optional<ffi::Any>& v) {
  if (!v) return std::nullopt;
  if (auto s = v->as<ffi::String>()) return std::string(*s);
  return std::nullopt;
}

inline std::optional<Object> as_object(const std::optional<ffi::Any>& v) {
  if (!v) return std::nullopt;
  return v->as<Object>();
}

inline std::optional<ffi::Array<ffi::Any>> as_array(const std::optional<ffi::Any>& v) {
  if (!v) return std::nullopt;
  return v->as<ffi::Array<ffi::Any>>();
}

// A JSON integer (not a bool, not a float).
inline std::optional<int64_t> as_int(const ffi::Any& v) {
  if (v.type_index() != ffi::TypeIndex::kTVMFFIInt) return std::nullopt;
  return v.as<int64_t>();
}

// A finite JSON number, integer or float.
inline std::optional<double> as_number(const ffi::Any& v) {
  std::optional<double> d;
  if (v.type_index() == ffi::TypeIndex::kTVMFFIFloat) d = v.as<double>();
  if (auto i = as_int(v)) d = double(*i);
  return d && std::isfinite(*d) ? d : std::nullopt;
}

inline std::string text(const std::optional<ffi::Any>& v) { return v ? show(*v) : "(missing)"; }

inline Object read_json(const std::string& root) {
  struct stat st;
  expect(::stat(root.c_str(), &st) == 0 && S_ISDIR(st.st_mode),
         "artifact '" + root + "' does not exist or is not a directory");
  std::string path = root + "/manifest.json";
  std::ifstream in(path, std::ios::binary);
  expect(bool(in), root + ": no readable manifest.json; is this a compiled gencc artifact?");
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  expect(int64_t(bytes.size()) <= kMaxManifestBytes, path + " is larger than 1 MiB; refusing to parse it");
  ffi::String error;
  ffi::Any value = ffi::json::Parse(ffi::String(bytes), &error);
  expect(error.empty(), path + " is not valid JSON: " + std::string(error));
  auto obj = value.as<Object>();
  expect(obj.has_value(), path + " must hold a JSON object");
  return *obj;
}

inline std::vector<int64_t> shape_of(const std::optional<ffi::Any>& v, const std::string& what) {
  auto arr = as_array(v);
  bool ok = arr && arr->size() > 0 && arr->size() <= 4;
  std::vector<int64_t> shape;
  int64_t total = 1;
  for (size_t i = 0; ok && i < arr->size(); ++i) {
    auto d = as_int((*arr)[i]);
    ok = d && *d > 0 && *d <= kMaxDim && (total *= *d) <= kMaxElements;
    if (ok) shape.push_back(*d);
  }
  expect(ok, "manifest " + what + " must be a list of 1-4 positive integers <= 65536 with at most 16777216 "
             "elements in all, got " + text(v));
  return shape;
}

inline std::vector<float> numbers_of(const std::optional<ffi::Any>& v, const std::string& what) {
  auto arr = as_array(v);
  expect(arr.has_value(), "manifest normalization " + what + " must be a list of numbers, got " + text(v));
  std::vector<float> out;
  for (const ffi::Any& x : *arr) {
    auto d = as_number(x);
    expect(d.has_value(), "manifest normalization " + what + " holds a non-number or non-finite value " + show(x));
    out.push_back(float(*d));   // the Python runtime decodes with float32 shift and scale too
  }
  return out;
}

inline void read_normalization(const Object& raw, Artifact& a) {
  auto norm = as_object(field(raw, "normalization"));
  expect(norm.has_value(), a.root + ": manifest normalization must be an object, got " + text(field(raw, "normalization")));
  expect(shape_of(field(*norm, "sample_shape"), "normalization sample_shape") == a.sample_shape,
         a.root + ": normalization is for sample shape " + text(field(*norm, "sample_shape")) +
         ", the manifest says " + text(field(raw, "sample_shape")));
  a.shift = numbers_of(field(*norm, "shift"), "shift");
  a.scale = numbers_of(field(*norm, "scale"), "scale");
  size_t n = a.shift.size();
  expect((n == 1 || int64_t(n) == a.sample_size) && a.scale.size() == n,
         a.root + ": normalization has " + std::to_string(n) + " shifts and " + std::to_string(a.scale.size()) +
         " scales for " + std::to_string(a.sample_size) + " elements per sample");
  for (float s : a.scale) expect(s > 0, a.root + ": normalization scale must be positive, got " + std::to_string(s));
}

inline void read_sde(const Object& raw, Artifact& a) {
  auto sde = as_object(field(raw, "sde"));
  auto kind = sde ? as_string(field(*sde, "kind")) : std::nullopt;
  expect(sde && (!field(*sde, "kind") || kind == "vp"),
         a.root + ": unknown SDE " + text(field(raw, "sde")) + "; only kind 'vp' is supported");
  double v[3];
  const char* keys[3] = {"beta_min", "beta_max", "t_eps"};
  for (int i = 0; i < 3; ++i) {
    auto x = field(*sde, keys[i]);
    auto d = x ? as_number(*x) : std::nullopt;
    expect(d.has_value(), a.root + ": SDE " + keys[i] + " must be a finite number, got " + text(x));
    v[i] = *d;
  }
  expect(0 < v[0] && v[0] < v[1] && 0 < v[2] && v[2] < 1,
         a.root + ": SDE needs 0 < beta_min < beta_max and 0 < t_eps < 1, got " + text(field(raw, "sde")));
  a.sde = {v[0], v[1], v[2]};
}

// A plain file name inside the artifact, as runtime/artifact.py's _FILE_NAME: no path separators, no "..".
inline bool safe_name(const std::string& s) {
  if (s.empty() || s.size() > 128 || s == "manifest.json") return false;
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    bool alnum = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
    if (!(alnum || (i > 0 && (c == '.' || c == '-')))) return false;
  }
  return true;
}

inline bool sha256_hex(const std::string& s) {
  if (s.size() != 64) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

inline void read_step(const Object& raw, Artifact& a) {
  auto functions = as_object(field(raw, "functions"));
  auto step = functions ? as_object(field(*functions, "step")) : std::nullopt;
  expect(step.has_value(), a.root + ": a diffusion artifact needs the function 'step'");
  auto lib = as_string(field(*step, "library"));
  expect(lib && safe_name(*lib), a.root + ": step library name " + text(field(*step, "library")) +
                                     " is not a plain file name inside the artifact");
  auto files = as_object(field(raw, "files"));
  auto digest = files ? as_string(field(*files, lib->c_str())) : std::nullopt;
  expect(digest && sha256_hex(*digest),
         a.root + ": the manifest lists no sha256 hex digest for " + *lib + "; refusing to load unhashed native code");
  a.step_library = *lib;
  a.step_sha256 = *digest;
}

}  // namespace detail

// Parse and check ROOT/manifest.json: a CPU-compiled diffusion artifact with the affine5-v1 step contract.
inline Artifact read_artifact(const std::string& root) {
  using namespace detail;
  Artifact a;
  a.root = root;
  Object raw = read_json(root);
  expect(as_string(field(raw, "format")) == "gencc-artifact",
         root + ": not a gencc artifact (format " + text(field(raw, "format")) + ")");
  auto version = field(raw, "format_version");
  expect(version && as_int(*version) == 1, root + ": artifact format version " + text(version) +
                                               " is not supported; this program reads version 1");
  auto model = as_string(field(raw, "model"));
  expect(model == "diffusion", root + ": model kind " + text(field(raw, "model")) +
                                   " is not supported; this program samples diffusion artifacts only");
  expect(as_string(field(raw, "step_contract")) == "affine5-v1",
         root + ": unknown sampler-step contract " + text(field(raw, "step_contract")));
  auto target = as_object(field(raw, "target"));
  auto kind = target ? as_string(field(*target, "kind")) : std::nullopt;
  expect(kind == "llvm", root + ": the artifact is compiled for target " + text(field(raw, "target")) +
                             "; this program runs CPU (llvm) artifacts only");
  a.sample_shape = shape_of(field(raw, "sample_shape"), "sample_shape");
  for (int64_t d : a.sample_shape) a.sample_size *= d;
  read_normalization(raw, a);
  read_sde(raw, a);
  read_step(raw, a);
  return a;
}

// The path of the step library, after checking it is a regular file whose sha256 matches the manifest.
inline std::string verified_step_library(const Artifact& a) {
  std::string path = a.root + "/" + a.step_library;
  struct stat st;
  detail::expect(::lstat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode),
                 a.root + ": listed file '" + a.step_library + "' is missing or not a regular file");
  std::string actual = sha256_file(path);
  detail::expect(actual == a.step_sha256, a.root + ": " + a.step_library + " is corrupt or tampered with: sha256 " +
                                              actual.substr(0, 16) + "... does not match the manifest's " +
                                              a.step_sha256.substr(0, 16) + "...");
  return path;
}

}  // namespace gencc
