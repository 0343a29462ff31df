// NextDiT, the FLUX VAE, samplers and guidance live here.
