//! Semantic checks on a parsed config: addresses, names, references, ranges.
