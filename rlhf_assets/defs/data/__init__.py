"""The data pillar: landing zone → raw_comparisons → validated_pairs → aggregated labels."""
