"""asv benchmarks for servekernels. Discovery imports only these modules; torch, triton and the kernels are
imported inside ``setup`` (and the Triton interpreter switched on there when there is no GPU)."""
