"""The explorer's pages: Streamlit scripts run by st.navigation (app/explorer.py), one per page."""
