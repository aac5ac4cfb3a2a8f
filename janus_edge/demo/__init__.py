"""`janus-edge demo`: the web page (Gradio; the optional extra `janus-edge[demo]`). Nothing here is imported by the
runtime; gradio is imported only when the page is built."""
