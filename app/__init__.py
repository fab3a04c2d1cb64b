"""The Streamlit explorer of per-token teacher–student divergence."""
