"""lightning-quant dashboard: browse, compare and inspect training runs from the run store.

Run it against a running API (``uvicorn api.main:app``)::

    streamlit run dashboard/app.py -- --api-url http://127.0.0.1:8000

(or set ``LQ_API_URL``). It reads the REST API only. The view lives in the URL:
``?runs=3,5&baseline=3`` compares runs 3 and 5, ``?scheme=qsgd&bits=4`` filters the
run list, ``?run=5`` opens run 5's own page.
"""

import sys
from pathlib import Path

import streamlit as st

# ``streamlit run dashboard/app.py`` puts dashboard/ on the path, not the repository.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dashboard import data  # noqa: E402
from dashboard.browser import browser_page  # noqa: E402
from dashboard.run_page import run_page  # noqa: E402
from dashboard.widgets import api_errors  # noqa: E402


def main() -> None:
    st.set_page_config(
        page_title="lightning-quant runs",
        page_icon=":material/compress:",
        layout="wide",
    )
    api_url = data.resolve_api_url(sys.argv[1:])
    with st.sidebar:
        st.markdown("### :material/compress: lightning-quant")
        st.caption(f"Run store: `{api_url}`")
        st.button(
            "Reload data",
            icon=":material/refresh:",
            on_click=st.cache_data.clear,
            help=f"Answers are cached for {data.TTL_S} s",
        )
    run_ids = [v for v in st.query_params.get_all("run") if v.strip().isdigit()]
    with api_errors(api_url):
        if run_ids:
            run_page(api_url, int(run_ids[0]))
        else:
            st.title("Quantized gradient exchange: runs")
            browser_page(api_url)


main()
