//! kiln's image build driver: recipes, installer media, answer files, seeds and conversion.
