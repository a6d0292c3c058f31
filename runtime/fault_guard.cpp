#include "fault_guard.hpp"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstring>

namespace zcwrap::detail {
namespace {

// Fixed slots, published with atomics: the signal handler may only read
// plain memory and call async-signal-safe functions.
struct Slot {
  std::atomic<uintptr_t> begin{0};
  std::atomic<uintptr_t> end{0};
  std::atomic<bool> taken{false};
  char path[512] = {};
};

constexpr int kSlots = 64;
Slot g_slots[kSlots];
std::atomic<bool> g_installed{false};
char g_hint[128] = "UnwrapOptions::copy_on_write";
struct sigaction g_previous_segv {};
struct sigaction g_previous_bus {};

void write_all(const char* text) {
  size_t left = std::strlen(text);
  while (left > 0) {
    ssize_t n = ::write(STDERR_FILENO, text, left);
    if (n <= 0) return;
    text += n;
    left -= static_cast<size_t>(n);
  }
}

// SIGSEGV inside a mapping: a write to a read-only weight. SIGBUS inside
// one: a read of a page the file no longer has (it was truncated or
// overwritten in place while mapped).
void on_fault(int sig, siginfo_t* info, void*) {
  const auto addr = reinterpret_cast<uintptr_t>(info->si_addr);
  for (Slot& slot : g_slots) {
    const uintptr_t begin = slot.begin.load(std::memory_order_acquire);
    if (begin != 0 && addr >= begin && addr < slot.end.load(std::memory_order_acquire)) {
      if (sig == SIGBUS) {
        write_all("zcwrap: fatal: ");
        write_all(slot.path);
        write_all(" shrank while mapped (SIGBUS reading a weight): the blob was truncated or overwritten in "
                  "place; replace a blob by writing a new file and renaming it over the old one (zcwrap pack "
                  "does), never in place\n");
      } else {
        write_all("zcwrap: fatal: write to a read-only weight of ");
        write_all(slot.path);
        write_all(": the weights are shared by every worker mapping this blob and cannot be changed in "
                  "place; unwrap with ");
        write_all(g_hint);
        write_all(" for private, writable weights\n");
      }
      break;
    }
  }
  // Returning re-runs the faulting access, which now meets the previous
  // action (by default: die of the same signal, with a core dump if enabled).
  ::sigaction(sig, sig == SIGBUS ? &g_previous_bus : &g_previous_segv, nullptr);
}

void install_once() {
  bool expected = false;
  if (!g_installed.compare_exchange_strong(expected, true)) return;
  struct sigaction action {};
  action.sa_sigaction = on_fault;
  action.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&action.sa_mask);
  ::sigaction(SIGSEGV, &action, &g_previous_segv);
  ::sigaction(SIGBUS, &action, &g_previous_bus);
}

}  // namespace

int register_readonly_mapping(const void* base, size_t size, const std::string& path) {
  if (base == nullptr || size == 0) return -1;
  install_once();
  for (int i = 0; i < kSlots; ++i) {
    bool expected = false;
    if (!g_slots[i].taken.compare_exchange_strong(expected, true)) continue;
    std::strncpy(g_slots[i].path, path.c_str(), sizeof(g_slots[i].path) - 1);
    g_slots[i].end.store(reinterpret_cast<uintptr_t>(base) + size, std::memory_order_release);
    g_slots[i].begin.store(reinterpret_cast<uintptr_t>(base), std::memory_order_release);
    return i;
  }
  return -1;
}

void set_copy_on_write_hint(const std::string& hint) {
  std::strncpy(g_hint, hint.c_str(), sizeof(g_hint) - 1);
}

void unregister_readonly_mapping(int handle) {
  if (handle < 0 || handle >= kSlots) return;
  g_slots[handle].begin.store(0, std::memory_order_release);
  g_slots[handle].end.store(0, std::memory_order_release);
  g_slots[handle].taken.store(false, std::memory_order_release);
}

}  // namespace zcwrap::detail
