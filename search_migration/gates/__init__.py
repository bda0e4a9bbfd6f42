"""The gates: reports that compare the engines (drift, shadow reads, golden queries) and the policy that judges them."""
