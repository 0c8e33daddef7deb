"""The networks: fast layers, the residual unit, and the builders."""
