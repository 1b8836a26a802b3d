"""HTTP layer: routes, dependencies, middleware and the mapping of domain errors to status codes."""
