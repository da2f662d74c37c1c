"""Independent reference code the tests compare against and the benchmarks time: ``spec`` (the
specification's own question preprocessing, verbatim). Nothing on the training path imports it."""
