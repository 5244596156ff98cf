// Precompiled header: the third-party headers that dominate compile time. Never include this directly.
#pragma once
#include <Eigen/Core>
#include <boost/multiprecision/cpp_bin_float.hpp>
#include <boost/multiprecision/eigen.hpp>
#include <nlohmann/json.hpp>
