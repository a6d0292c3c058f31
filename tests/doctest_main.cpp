// The one translation unit that holds doctest's runner. A test executable
// may take over main() by defining ZCWRAP_TEST_CHILD_MAIN (see support.hpp).
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include "support.hpp"

int main(int argc, char** argv) {
  if (argc >= 2 && std::string(argv[1]) == "--child" && zcwrap::test::child_main != nullptr) {
    return zcwrap::test::child_main(argc, argv);
  }
  doctest::Context context(argc, argv);
  return context.run();
}
