"""The application around the library: the ``lightning-quant`` command and the demo.

It starts the run store's server (:mod:`api.server`), the dashboard
(:mod:`dashboard.server`) and sweeps (:mod:`benchmarks.sweep`) through their packages'
own entry points; the library, ``lightning_quant``, never imports any of them.
"""
