"""Beyond one machine: emovox on Ray (batch classification with Ray Data, the HTTP service on Ray Serve).

Ray is optional (``pip install 'emovox[ray]'``) and imported only inside these modules' functions;
nothing else in emovox imports it. See docs/scale.md.
"""
