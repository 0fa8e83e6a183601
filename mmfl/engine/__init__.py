"""Round steps, explicit state, and the engines that drive them."""
