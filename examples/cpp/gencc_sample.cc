// gencc_sample: draw samples from a compiled gencc diffusion artifact in C++, with TVM's runtime library only.
//
//   gencc_sample ARTIFACT --n 100 [--steps 200] [--seed 0] [--batch 1024] [--sampler em] --out samples.npy
//
// The same reverse-SDE Euler-Maruyama loop as `gencc.load(ARTIFACT).sample(n, sampler="em", seed=seed)`:
// the same time grid, the same fused-step scalars, the same per-sample Philox noise and the same mapping
// back to data units, so sample i for a seed matches the Python runtime's (to float rounding in the
// libm calls). Build and usage: docs/EMBEDDING.md. Exit status: 0 done, 2 bad input (one line on
// stderr, nothing written), 1 a failure while sampling.
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "artifact.h"
#include "noise.h"
#include "npy.h"
#include "sde.h"

namespace ffi = tvm::ffi;
using ffi::Tensor;

namespace gencc {

const char* const kUsage =
    "usage: gencc_sample ARTIFACT --n N --out FILE.npy [--steps 200] [--seed 0] [--batch 1024] [--sampler em]\n"
    "       gencc_sample --sha256 FILE        (print a file's sha256, as the artifact check computes it)\n";

struct Options {
  std::string artifact, out, sha256_file;
  int64_t n = 0, steps = 200, batch = 1024;   // steps: the Python runtime's default
  uint64_t seed = 0;
  std::string sampler = "em";
};

// A decimal integer in [lo, hi], the whole string and nothing else: "--n 1e3", "-5" and "12abc" are refused.
uint64_t parse_uint(const std::string& name, const std::string& s, uint64_t lo, uint64_t hi) {
  bool digits = !s.empty() && s.size() <= 20 && s.find_first_not_of("0123456789") == std::string::npos;
  errno = 0;
  unsigned long long v = digits ? std::strtoull(s.c_str(), nullptr, 10) : 0;
  if (!digits || errno == ERANGE || v < lo || v > hi) {
    throw InputError(name + " must be an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got '" + s + "'");
  }
  return v;
}

Options parse_args(int argc, char** argv) {
  Options o;
  std::vector<std::string> args(argv + 1, argv + argc);
  for (size_t i = 0; i < args.size(); ++i) {
    std::string a = args[i], value;
    if (a == "-h" || a == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    }
    if (a.rfind("--", 0) != 0) {
      if (!o.artifact.empty()) throw InputError("unexpected extra argument '" + a + "' (one ARTIFACT only)");
      o.artifact = a;
      continue;
    }
    size_t eq = a.find('=');
    if (eq != std::string::npos) {
      value = a.substr(eq + 1), a = a.substr(0, eq);
    } else if (i + 1 < args.size()) {
      value = args[++i];
    } else {
      throw InputError("option " + a + " needs a value");
    }
    if (a == "--n") o.n = int64_t(parse_uint("--n", value, 1, 1ull << 40));
    else if (a == "--steps") o.steps = int64_t(parse_uint("--steps", value, 1, 10000000));
    else if (a == "--batch") o.batch = int64_t(parse_uint("--batch", value, 1, 1ull << 24));
    else if (a == "--seed") o.seed = parse_uint("--seed", value, 0, UINT64_MAX);
    else if (a == "--sampler") o.sampler = value;
    else if (a == "--out") o.out = value;
    else if (a == "--sha256") o.sha256_file = value;
    else throw InputError("unknown option '" + a + "'; see --help");
  }
  if (!o.sha256_file.empty()) return o;
  if (o.artifact.empty()) throw InputError("missing ARTIFACT (a NAME.gencc directory); see --help");
  if (o.n == 0) throw InputError("missing --n (the number of samples)");
  if (o.out.empty()) throw InputError("missing --out (the .npy file to write)");
  if (o.out.size() < 5 || o.out.compare(o.out.size() - 4, 4, ".npy") != 0) {
    throw InputError("--out must name a .npy file, got '" + o.out + "'");
  }
  if (o.sampler != "em") {
    throw InputError("unknown sampler '" + o.sampler + "'; this program implements em only (the Python runtime has them all)");
  }
  return o;
}

// The output's folder must exist and be writable before any sampling time is spent.
void check_output(const std::string& out) {
  struct stat st;
  if (::stat(out.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) throw InputError("--out '" + out + "' is a directory");
  size_t slash = out.rfind('/');
  std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : out.substr(0, slash));
  if (::access(dir.c_str(), W_OK) != 0) throw InputError("cannot write --out '" + out + "': folder '" + dir + "' is missing or not writable");
}

// Refuse up front what cannot fit in memory, rather than be killed part-way.
void check_memory(const Options& o, const Artifact& a) {
  double need = 4.0 * a.sample_size * (double(o.n) + 8.0 * double(std::min(o.n, o.batch)));
  double total = double(::sysconf(_SC_PAGE_SIZE)) * double(::sysconf(_SC_PHYS_PAGES));
  if (total > 0 && need > total) {
    throw InputError("--n " + std::to_string(o.n) + " with --batch " + std::to_string(o.batch) + " needs about " +
                     std::to_string(int64_t(need / (1 << 20))) + " MiB, more than this machine's " +
                     std::to_string(int64_t(total / (1 << 20))) + " MiB");
  }
}

// The artifact's fused step (x, t, coef, z, x_prev, e_prev) -> (x_next, eps), run by the Relax VM on the CPU.
class StepLibrary {
 public:
  explicit StepLibrary(const std::string& path) : lib_(ffi::Module::LoadFromFile(path)), vm_(load_vm(lib_, path)) {
    // As tvm.runtime.vm.VirtualMachine(lib, tvm.cpu()): device type, device id, pooled allocator (2).
    vm_->GetFunction("vm_initialization", false).value()(int64_t(kDLCPU), int64_t(0), int64_t(2));
    auto main = vm_->GetFunction("main", false);
    if (!main) throw InputError(path + " has no function 'main'");
    main_ = *main;
  }

  Tensor operator()(const Tensor& x, const Tensor& t, const Tensor& coef, const Tensor& z, const Tensor& zero) const {
    ffi::Array<ffi::Any> out = main_(x, t, coef, z, zero, zero).cast<ffi::Array<ffi::Any>>();
    return out[0].cast<ffi::Tensor>();   // x_next; out[1] is eps, which em does not reuse
  }

 private:
  static ffi::Module load_vm(const ffi::Module& lib, const std::string& path) {
    auto load = lib->GetFunction("vm_load_executable", true);
    if (!load) throw InputError(path + " holds no Relax VM executable");
    return (*load)().cast<ffi::Module>();
  }

  ffi::Module lib_;   // held for as long as the VM runs its kernels (declared first: initialised first)
  ffi::Module vm_;
  ffi::Function main_;
};

// Host memory for tensors the step reads: 64-byte aligned, as TVM's own allocator gives its kernels.
struct AlignedCPUAlloc {
  void AllocData(DLTensor* t) {
    size_t bytes = (ffi::GetDataSize(*t) + 63) / 64 * 64;
    t->data = std::aligned_alloc(64, bytes ? bytes : 64);
    if (!t->data) throw std::bad_alloc();
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

Tensor host_tensor(const std::vector<int64_t>& shape) {
  return Tensor::FromNDAlloc(AlignedCPUAlloc(), ffi::Shape(shape), DLDataType{kDLFloat, 32, 1}, DLDevice{kDLCPU, 0});
}

void fill(Tensor& t, const float* v) { std::memcpy(t.data_ptr(), v, ffi::GetDataSize(t.numel(), t.dtype())); }

// The step's output, checked to be what the contract says before its bytes are read.
void read(const Tensor& t, const std::vector<int64_t>& shape, float* out) {
  bool ok = t.device().device_type == kDLCPU && t.dtype().code == kDLFloat && t.dtype().bits == 32 &&
            t.dtype().lanes == 1 && t.IsContiguous() && t.shape().size() == shape.size();
  for (size_t i = 0; ok && i < shape.size(); ++i) ok = t.shape()[i] == shape[i];
  if (!ok) throw std::runtime_error("the step returned a tensor of unexpected shape, dtype or layout");
  std::memcpy(out, static_cast<const char*>(t.data_ptr()) + t.byte_offset(), ffi::GetDataSize(t.numel(), t.dtype()));
}

// Samples first .. first + b - 1 in model space into out (b x sample_size floats): runtime/samplers.py's sample_em.
void sample_chunk(const StepLibrary& step, const Artifact& a, const std::vector<double>& ts, uint64_t seed,
                  uint64_t first, int64_t b, float* out) {
  const int64_t d = a.sample_size;
  std::vector<int64_t> shape{b};
  shape.insert(shape.end(), a.sample_shape.begin(), a.sample_shape.end());
  std::vector<float> host(b * d);
  auto draw = [&](uint32_t stream, Tensor& dst) {   // stream 0: the prior; stream k + 1: the noise of step k
    for (int64_t i = 0; i < b; ++i) sample_normals(seed, first + i, stream, d, &host[i * d]);
    fill(dst, host.data());
  };
  Tensor x = host_tensor(shape), z = host_tensor(shape), zero = host_tensor(shape);
  Tensor t = host_tensor({1}), coef = host_tensor({5});
  draw(0, x);
  std::memset(zero.data_ptr(), 0, b * d * sizeof(float));   // x_prev and e_prev: unused by em, but must be finite
  auto set_scalars = [&](double tk, const Coef& c) {
    float tf = float(tk);
    fill(t, &tf);
    fill(coef, c.c);
  };
  const int64_t steps = int64_t(ts.size()) - 1;
  for (int64_t k = 0; k < steps; ++k) {   // Euler-Maruyama, backwards in time: h > 0
    double tk = ts[k], h = ts[k] - ts[k + 1];
    draw(uint32_t(k + 1), z);
    set_scalars(tk, em_coef(a.sde, tk, h));
    x = step(x, t, coef, z, zero);
  }
  set_scalars(ts[steps], denoise_coef(a.sde, ts[steps]));   // the final noise-free denoising step
  x = step(x, t, coef, zero, zero);
  read(x, shape, out);
}

// Model space -> data units, as runtime/normalize.py: x * scale + shift in float32.
void decode(const Artifact& a, std::vector<float>& x) {
  const size_t per = a.shift.size();
  for (size_t i = 0; i < x.size(); ++i) {
    size_t e = per == 1 ? 0 : i % per;
    x[i] = x[i] * a.scale[e] + a.shift[e];
  }
}

std::string sampler_text(const Options& o) {
  return o.sampler + ", " + std::to_string(o.steps) + " steps, seed " + std::to_string(o.seed);
}

int run(const Options& o) {
  if (!o.sha256_file.empty()) {
    std::printf("%s\n", sha256_file(o.sha256_file).c_str());
    return 0;
  }
  Artifact a = read_artifact(o.artifact);
  check_output(o.out);
  check_memory(o, a);
  std::string lib = verified_step_library(a);   // before any of its native code is loaded
  // As the Python runtime: TVM would use half the cores on x86 (it assumes hyper-threads).
  ::setenv("TVM_NUM_THREADS", std::to_string(std::max(1u, std::thread::hardware_concurrency())).c_str(), 0);
  StepLibrary step(lib);
  std::vector<double> ts = time_grid(a.sde, o.steps);
  std::vector<float> samples(size_t(o.n) * a.sample_size);
  for (int64_t lo = 0; lo < o.n; lo += o.batch) {
    int64_t b = std::min(o.batch, o.n - lo);
    sample_chunk(step, a, ts, o.seed, uint64_t(lo), b, &samples[lo * a.sample_size]);
  }
  int64_t bad = 0;
  for (float v : samples) bad += !std::isfinite(v);
  if (bad) {
    throw std::runtime_error("sampling produced " + std::to_string(bad) + " NaN/inf values; the model may be "
                             "diverged or the step count too small");
  }
  decode(a, samples);
  std::vector<int64_t> shape{o.n};
  shape.insert(shape.end(), a.sample_shape.begin(), a.sample_shape.end());
  write_npy(o.out, shape, samples);
  std::fprintf(stderr, "wrote %lld samples (%s) to %s\n", (long long)o.n, sampler_text(o).c_str(), o.out.c_str());
  return 0;
}

// One line, whatever the error carried (TVM messages can hold several, and a backtrace).
std::string one_line(std::string s) {
  s = s.substr(0, s.find('\n'));
  return s.size() > 500 ? s.substr(0, 497) + "..." : s;
}

}  // namespace gencc

int main(int argc, char** argv) {
  try {
    return gencc::run(gencc::parse_args(argc, argv));
  } catch (const gencc::InputError& e) {
    std::fprintf(stderr, "gencc_sample: error: %s\n", gencc::one_line(e.what()).c_str());
    return 2;
  } catch (const ffi::Error& e) {
    std::fprintf(stderr, "gencc_sample: error: %s: %s\n", e.kind().c_str(), gencc::one_line(e.message()).c_str());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gencc_sample: error: %s\n", gencc::one_line(e.what()).c_str());
    return 1;
  }
}
