// A program that does not link LibTorch and loads a plugin that does with
// RTLD_LOCAL: LibTorch then sits in the plugin's local scope, as it does in
// a Python process (torch's extension modules are loaded RTLD_LOCAL), where
// an AOTInductor .so (no DT_NEEDED on LibTorch) cannot resolve its symbols.
// The plugin unwraps a blob and runs it (tests/aoti_dlopen_plugin.cpp).
//
// Usage: aoti_dlopen_host PLUGIN BLOB INPUT OUTPUT; prints the plugin's line.
#include <dlfcn.h>
#include <cstdio>

using UnwrapRun = int (*)(const char*, const char*, const char*, char*, unsigned long);

int main(int argc, char** argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: aoti_dlopen_host PLUGIN BLOB INPUT OUTPUT\n");
    return 2;
  }
  void* plugin = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (plugin == nullptr) {
    printf("cannot load the plugin: %s\n", dlerror());
    return 1;
  }
  auto fn = reinterpret_cast<UnwrapRun>(dlsym(plugin, "zcwrap_test_unwrap_run"));
  if (fn == nullptr) {
    printf("the plugin has no zcwrap_test_unwrap_run\n");
    return 1;
  }
  // From this program, RTLD_DEFAULT sees the global scope only: whether an
  // AOTInductor .so loaded now could resolve LibTorch's shim.
  const bool global_before = dlsym(RTLD_DEFAULT, "aoti_torch_dtype_float32") != nullptr;
  char message[4096] = {0};
  const int rc = fn(argv[2], argv[3], argv[4], message, sizeof(message));
  printf("%s; libtorch was %s before the unwrap\n", message, global_before ? "global" : "local");
  return rc;
}
