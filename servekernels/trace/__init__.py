"""FlashInfer-Trace interchange: read and write flashinfer-bench's Definition / Workload / Solution / Trace
(``schema``), export the registry's ops and adversarial cases (``export``), judge anyone's Solutions with this
suite's oracle and tolerances (``judge``), and measure which published families the suite can judge
(``coverage``). It lives under ``servekernels`` because it is a consumer of the registry and the judge, like
``check``: nothing in ``kernels`` imports it. See docs/trace.md."""
