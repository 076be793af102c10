// bench_masked_weights: times wtext::tied_masked_weights forward + backward against the ATen equivalent (masks
// drawn with a seeded generator, multiplied, gradients summed), in one run, on CPU or CUDA.
//
//   bench_masked_weights [--device cpu|cuda] [--channels C] [--layers L] [--density D] [--pattern P]
//                        [--warmup W] [--repeats N]
//
// CPU times are wall-clock (std::chrono); CUDA times come from CUDA events on the current stream. Each case runs W
// untimed warm-up iterations, then N timed ones; the median is printed.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#ifdef WTEXT_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#endif

namespace {

struct Options {
  std::string device = "cpu";
  int64_t channels = 256;
  int64_t layers = 6;
  double density = 0.5;
  std::string pattern = "bernoulli";
  int warmup = 5;
  int repeats = 20;
};

[[noreturn]] void usage(const char* problem) {
  std::fprintf(stderr,
               "bench_masked_weights: %s\n"
               "usage: bench_masked_weights [--device cpu|cuda] [--channels C] [--layers L] [--density D]\n"
               "                            [--pattern bernoulli|exact|nm] [--warmup W] [--repeats N]\n",
               problem);
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--help" || flag == "-h") usage("times tied_masked_weights fwd+bwd against ATen");
    if (i + 1 >= argc) usage(("missing value after " + flag).c_str());
    const std::string value = argv[++i];
    if (flag == "--device") options.device = value;
    else if (flag == "--channels") options.channels = std::stoll(value);
    else if (flag == "--layers") options.layers = std::stoll(value);
    else if (flag == "--density") options.density = std::stod(value);
    else if (flag == "--pattern") options.pattern = value;
    else if (flag == "--warmup") options.warmup = std::stoi(value);
    else if (flag == "--repeats") options.repeats = std::stoi(value);
    else usage(("unknown option " + flag).c_str());
  }
  if (options.device != "cpu" && options.device != "cuda") usage("--device must be cpu or cuda");
  if (options.channels < 1 || options.layers < 1 || options.repeats < 1 || options.warmup < 0) {
    usage("--channels, --layers and --repeats must be >= 1, --warmup >= 0");
  }
  return options;
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

double time_ms(const Options& options, const std::function<void()>& fn) {
  for (int i = 0; i < options.warmup; ++i) fn();
  std::vector<double> times;
#ifdef WTEXT_WITH_CUDA
  if (options.device == "cuda") {
    cudaEvent_t start, stop;
    cudaEventCreate(&start);
    cudaEventCreate(&stop);
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    for (int i = 0; i < options.repeats; ++i) {
      cudaEventRecord(start, stream);
      fn();
      cudaEventRecord(stop, stream);
      cudaEventSynchronize(stop);
      float ms = 0;
      cudaEventElapsedTime(&ms, start, stop);
      times.push_back(ms);
    }
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    return median(times);
  }
#endif
  for (int i = 0; i < options.repeats; ++i) {
    const auto start = std::chrono::steady_clock::now();
    fn();
    times.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  return median(times);
}

}  // namespace

int run(const Options& options);

int main(int argc, char** argv) {
  const Options options = parse(argc, argv);
  try {
    return run(options);
  } catch (const c10::Error& error) {
    std::fprintf(stderr, "bench_masked_weights: %s\n", error.what_without_backtrace());
    return 1;
  }
}

int run(const Options& options) {
#ifndef WTEXT_WITH_CUDA
  if (options.device == "cuda") usage("this binary was built without CUDA (configure with -DWTEXT_WITH_CUDA=ON)");
#endif
  if (options.device == "cuda" && !at::hasCUDA()) usage("--device cuda, but no CUDA device is visible");
  const auto device = options.device == "cuda" ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);
  const auto float_options = at::TensorOptions().dtype(at::kFloat).device(device);
  const int64_t c = options.channels;
  const at::Tensor weight = at::randn({c, c, 3, 3}, float_options);
  const at::Tensor grad = at::randn({options.layers, c, c, 3, 3}, float_options);
  std::vector<int64_t> layers(options.layers);
  for (int64_t l = 0; l < options.layers; ++l) layers[l] = l;

  // density is a Scalar in both schemas (so the ops can refuse a bool); this binary always passes a real number.
  using DensityScalar = const c10::Scalar&;
  auto forward = c10::Dispatcher::singleton()
                     .findSchemaOrThrow("wtext::tied_masked_weights", "")
                     .typed<at::Tensor(const at::Tensor&, at::IntArrayRef, int64_t, DensityScalar, c10::string_view,
                                       int64_t, int64_t, c10::string_view, std::optional<at::ScalarType>)>();
  auto backward = c10::Dispatcher::singleton()
                      .findSchemaOrThrow("wtext::tied_masked_weights_backward", "")
                      .typed<at::Tensor(const at::Tensor&, const at::Tensor&, at::IntArrayRef, int64_t, DensityScalar,
                                        c10::string_view, int64_t, int64_t, c10::string_view)>();

  const c10::Scalar density(options.density);
  const double wtext_ms = time_ms(options, [&] {
    forward.call(weight, layers, 1, density, options.pattern, 2, 4, "multi", std::nullopt);
    backward.call(grad, weight, layers, 1, density, options.pattern, 2, 4, "multi");
  });
  const double aten_ms = time_ms(options, [&] {
    // Masks drawn on the device per call (what wtext replaces), then the forward product and the gradient sum.
    const at::Tensor masks = at::rand({options.layers, c, c, 3, 3}, float_options).lt(options.density).to(at::kFloat);
    const at::Tensor out = weight.unsqueeze(0) * masks;
    const at::Tensor grad_weight = (grad * masks).sum(0);
  });
  std::printf("tied_masked_weights fwd+bwd, L=%lld, weight [%lld, %lld, 3, 3], density %.2f, pattern %s, %s\n",
              static_cast<long long>(options.layers), static_cast<long long>(c), static_cast<long long>(c),
              options.density, options.pattern.c_str(), options.device.c_str());
  std::printf("%-44s %10s %12s\n", "case", "median ms", "vs ATen");
  std::printf("%-44s %10.3f %11.2fx\n", "ATen: build masks, multiply, sum grads", aten_ms, 1.0);
  std::printf("%-44s %10.3f %11.2fx\n", "wtext tied_masked_weights + backward", wtext_ms, wtext_ms / aten_ms);
  return 0;
}
