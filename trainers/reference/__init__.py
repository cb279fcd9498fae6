"""The shared reference pass: reference log-probs of every pair, computed once per sweep."""
