import CPNG
// PNG reading and writing live here.
