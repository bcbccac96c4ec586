// The handle of a custom autograd node across the torch range: torch 2.11 holds nodes in
// std::shared_ptr (Node : std::enable_shared_from_this), later releases in c10::intrusive_ptr
// (Node : c10::intrusive_ptr_target). set_history takes either from the result of make_node.
#pragma once

#include <torch/csrc/autograd/function.h>

#include <memory>
#include <type_traits>

namespace fastmaml {

template <class T>
auto make_node() {
  if constexpr (std::is_base_of_v<c10::intrusive_ptr_target, torch::autograd::Node>)
    return c10::make_intrusive<T>();
  else
    return std::make_shared<T>();
}

template <class T>
using NodeHandle = decltype(make_node<T>());

}  // namespace fastmaml
