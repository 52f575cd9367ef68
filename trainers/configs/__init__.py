"""The methods' Config dataclasses, kept free of torch so that specs, config files and
`c2f train METHOD --help` can read them without importing any model."""
