# steer — one binary, `steer`, and its tests. GNU Make.
#   make            build build/steer
#   make deps       install the Debian packages the build and tests need (apt-get)
#   make run        deps + build + the main job (see README)
#   make test       deps + build + every test; prints "N passed, N failed", non-zero on failure
#   make bench      deps + build + speed figures beside PyTorch's (steer bench) and the server's
#                   beside the bare generator's (bench/serve.sh)
#   make asan       build with AddressSanitizer/UBSan into build-asan/ (make test runs the
#                   server's protocol tests against it too)
#   make CUDA=1     also build the CUDA backend (kernels/cuda/*.cu, nvcc) into libsteer.a and its
#                   op test $(BUILD)/tests/cuda/test_cuda_ops (skips without a GPU); docs/gpu.md.
#                   Use another BUILD for it (make CUDA=1 BUILD=build-cuda): build/ stays CPU-only.
#   make cuda-shim  the CUDA build's C code (generator/gan_cuda.c, sagan_cuda.c) on a CPU stand-in
#                   for the CUDA backend, checked bit for bit against the CPU (tests/cuda/shim/);
#                   needs only the CUDA headers, and `make`'s build/.
#   make cuda-emu   the whole CUDA build on cuemu, a CPU emulation of the CUDA runtime, cuBLAS,
#                   cuDNN and kernel launches (tests/cuda/emu/), into build-cuemu/, and its three
#                   CUDA tests run there: our .cu kernels checked without a GPU (slowly).

CC      ?= cc
BUILD   ?= build
OPT     ?= -O2
# OpenMPI (data-parallel training, generator/dist.c): only called when launched by mpirun.
MPI_CFLAGS := $(shell pkg-config --cflags ompi-c 2>/dev/null)
MPI_LIBS   := $(shell pkg-config --libs ompi-c 2>/dev/null || echo -lmpi)
CFLAGS  += $(OPT) -g -Wall -Wextra -std=c11 -D_GNU_SOURCE -march=native -fno-math-errno -ffp-contract=fast -fopenmp -I. $(MPI_CFLAGS) $(EXTRA_CFLAGS)
LDLIBS  += -lsqlite3 -lwebsockets -luv -lmsgpackc -ldnnl -llapacke -lopenblas -ljansson -lcrypto -lpng -lz $(MPI_LIBS) -lm -lpthread
LDFLAGS += -fopenmp $(EXTRA_LDFLAGS)

# The library's parts, lowest layer first (docs/architecture.md; tests/layers.sh checks that every
# include goes down this list or stays in its folder). cmd/ (the commands) sits on top, outside
# libsteer.a; clients/ stand apart.
PARTS    := util kernels generator/data generator policy env server
REF_SRC  := $(wildcard kernels/reference*.c)
LIB_SRC  := $(filter-out $(REF_SRC),$(foreach p,$(PARTS),$(wildcard $(p)/*.c)))
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)
REF_OBJ  := $(REF_SRC:%.c=$(BUILD)/%.o)
CMD_SRC  := $(wildcard cmd/*.c)
CMD_OBJ  := $(CMD_SRC:%.c=$(BUILD)/%.o)
TEST_SRC := $(wildcard tests/test_*.c)
CHECK_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(wildcard tests/check.c))
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)

# The CUDA backend, only with CUDA=1: nvcc compiles kernels/cuda/*.cu for Ampere (sm_80, which
# also runs on sm_86/sm_89) and Hopper (sm_90, the H100/H200), plus sm_90 PTX that newer GPUs
# compile at load time. C code sees STEER_CUDA=1. Without CUDA=1 none of this applies (CUDA_HOME
# is also where `make cuda-shim` looks for the headers).
comma         := ,
CUDA_HOME     ?= /usr/local/cuda
CUDA_SRC      :=
CUDA_OBJ      :=
CUDA_TEST_BIN :=
ifeq ($(CUDA),1)
NVCC      ?= $(CUDA_HOME)/bin/nvcc
CUDA_ARCH ?= -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
             -gencode arch=compute_90,code=compute_90
NVCCFLAGS := -O2 -g -lineinfo -std=c++17 -Xcompiler -Wall,-Wextra $(CUDA_ARCH) -I. -DSTEER_CUDA=1 \
             $(EXTRA_NVCCFLAGS)
CUDA_LIBDIRS  := $(sort $(wildcard $(CUDA_HOME)/lib64 $(CUDA_HOME)/lib /usr/local/cuda-13.0/lib))
CUDA_SRC      := $(wildcard kernels/cuda/*.cu)
CUDA_OBJ      := $(CUDA_SRC:%.cu=$(BUILD)/%.o)
CUDA_TEST_BIN := $(patsubst tests/%.c,$(BUILD)/tests/%,$(wildcard tests/cuda/test_*.c))
LIB_OBJ       += $(CUDA_OBJ)
CFLAGS  += -DSTEER_CUDA=1 -I$(CUDA_HOME)/include
LDFLAGS += $(addprefix -L,$(CUDA_LIBDIRS)) $(addprefix -Wl$(comma)-rpath$(comma),$(CUDA_LIBDIRS))
LDLIBS  += -lcudnn -lcublas -lcudart -lstdc++
endif
# CUDA_EMU=1 (with CUDA=1; what `make cuda-emu` does): the .cu files go through the C++ compiler
# onto cuemu instead of nvcc, and cuemu's runtime replaces libcudart, libcublas and libcudnn, and
# libnccl, which the real build loads at run time (cuemu's NCCL is MPI on the host).
ifeq ($(CUDA)$(CUDA_EMU),11)
CXX          ?= c++
EMU_CXXFLAGS := $(OPT) -g -std=c++17 -Wall -Wextra -Wno-deprecated-declarations -I. \
                -I$(CUDA_HOME)/include $(MPI_CFLAGS) -DSTEER_CUDA=1 -include tests/cuda/emu/cuemu.h
LIB_OBJ      += $(BUILD)/tests/cuda/emu/cuemu_rt.o
LDFLAGS      := $(filter-out -L% -Wl$(comma)-rpath%,$(LDFLAGS))
LDLIBS       := $(filter-out -lcudnn -lcublas -lcudart,$(LDLIBS))
# dist_cuda.c looks NCCL up with dlsym before it dlopens libnccl: cuemu's stand-in is exported.
LDFLAGS      += -Wl,--export-dynamic-symbol=nccl*
endif

CLIENT_SRC := $(wildcard clients/c/*.c)
CLIENT_OBJ := $(CLIENT_SRC:%.c=$(BUILD)/%.o)

.PHONY: all deps run test test-only bench asan cuda-shim cuda-emu clean
all: $(BUILD)/steer $(BUILD)/steer-client $(CUDA_TEST_BIN)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

ifeq ($(CUDA_EMU),1)
# cuemu: `k<<<grid, block, shmem, stream>>>(` becomes `CUEMU_LAUNCH(k, grid, block, shmem,
# stream)(`, line for line, then the C++ compiler (tests/cuda/emu/cuemu.h).
$(BUILD)/%.o: %.cu tests/cuda/emu/cuemu.h
	@mkdir -p $(dir $@)
	{ echo '#line 1 "$<"'; sed -E 's/([A-Za-z_][A-Za-z_0-9]*)<<<(.*)>>>\(/CUEMU_LAUNCH(\1, \2)(/' $<; } >$(@:.o=.emu.cc)
	$(CXX) $(EMU_CXXFLAGS) -MMD -MP -MT $@ -c $(@:.o=.emu.cc) -o $@

$(BUILD)/tests/cuda/emu/cuemu_rt.o: tests/cuda/emu/cuemu_rt.cc tests/cuda/emu/cuemu.h
	@mkdir -p $(dir $@)
	$(CXX) $(filter-out -include tests/cuda/emu/cuemu.h,$(EMU_CXXFLAGS)) -MMD -MP -c $< -o $@
else
$(BUILD)/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -MMD -MP -c $< -o $@
endif

$(BUILD)/libsteer.a: $(LIB_OBJ)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/steer: $(CMD_OBJ) $(BUILD)/libsteer.a
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

# steer-client: the C client and load generator (libwebsockets on libuv, msgpack-c; no model code).
$(BUILD)/steer-client: $(CLIENT_OBJ)
	$(CC) $(LDFLAGS) $^ -o $@ -lwebsockets -lmsgpackc -luv -lm

$(BUILD)/tests/%: $(BUILD)/tests/%.o $(CHECK_OBJ) $(REF_OBJ) $(BUILD)/libsteer.a
	$(CC) $(LDFLAGS) $^ -o $@ -lcmocka $(LDLIBS)

deps:
	@bash scripts/deps.sh

run: deps
	@$(MAKE) --no-print-directory all
	@bash scripts/run.sh

test: deps
	@$(MAKE) --no-print-directory all $(TEST_BIN)
	@$(MAKE) --no-print-directory asan
	@bash tests/run.sh $(BUILD)

# The suite without the deps step (what a developer re-runs).
test-only: all $(TEST_BIN)
	@bash tests/run.sh $(BUILD)

bench: deps
	@$(MAKE) --no-print-directory all
	@bash bench/run.sh $(BUILD)

asan:
	@$(MAKE) --no-print-directory BUILD=build-asan OPT=-O1 \
	    EXTRA_CFLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer" \
	    EXTRA_LDFLAGS="-fsanitize=address,undefined" build-asan/steer build-asan/steer-client

# The CUDA build's orchestration without a GPU: generator/gan_cuda.c, sagan_cuda.c and
# generator/finetune.c and distill.c (their GPU paths) compiled by
# the C compiler with STEER_CUDA=1 (the CUDA headers for the runtime's types; no nvcc, no CUDA
# library) into $(BUILD)/cuda-shim/, linked with tests/cuda/shim/cuda_shim.c (every CUDA call on
# its CPU twin) and the CPU build's libsteer.a, and checked against gan_step and generator_forward
# by tests/cuda/shim/test_shim_exact.c. Nothing else reads $(BUILD)/cuda-shim/. Not with CUDA=1:
# that libsteer.a holds the real backend, whose symbols the stand-in defines again.
SHIM_DIR    := $(BUILD)/cuda-shim
SHIM_SRC    := generator/gan_cuda.c generator/sagan_cuda.c generator/finetune.c generator/distill.c \
               tests/cuda/shim/cuda_shim.c tests/cuda/shim/test_shim_exact.c
SHIM_OBJ    := $(SHIM_SRC:%.c=$(SHIM_DIR)/%.o)
SHIM_CFLAGS  = $(CFLAGS) -DSTEER_CUDA=1 -I$(CUDA_HOME)/include

cuda-shim:
ifeq ($(CUDA),1)
	@echo "cuda-shim: it links the CPU build's libsteer.a; run it without CUDA=1" >&2; exit 1
else
	@if [ ! -f "$(CUDA_HOME)/include/cuda_runtime_api.h" ]; then \
	    echo "cuda-shim: skipped: no $(CUDA_HOME)/include/cuda_runtime_api.h (set CUDA_HOME)"; \
	else \
	    $(MAKE) --no-print-directory $(SHIM_DIR)/test_shim_exact && $(SHIM_DIR)/test_shim_exact; \
	fi
endif

$(SHIM_DIR)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(SHIM_CFLAGS) -MMD -MP -c $< -o $@

$(SHIM_DIR)/test_shim_exact: $(SHIM_OBJ) $(CHECK_OBJ) $(BUILD)/libsteer.a
	$(CC) $(LDFLAGS) $^ -o $@ -lcmocka $(LDLIBS)

# The CUDA build on cuemu (tests/cuda/emu/, docs/gpu.md "cuemu"): every .cu kernel, the cuBLAS and
# cuDNN calls and the C code around them run on the CPU, and the three CUDA tests check them
# against the CPU references as they would on a GPU. Its own build directory, build-cuemu/.
cuda-emu:
	@if [ ! -f "$(CUDA_HOME)/include/cuda_runtime_api.h" ]; then \
	    echo "cuda-emu: skipped: no $(CUDA_HOME)/include/cuda_runtime_api.h (set CUDA_HOME)"; \
	else \
	    $(MAKE) --no-print-directory CUDA=1 CUDA_EMU=1 BUILD=build-cuemu \
	        build-cuemu/steer $(patsubst tests/%.c,build-cuemu/tests/%,$(wildcard tests/cuda/test_*.c)) && \
	    bash tests/cuda/emu/run.sh build-cuemu; \
	fi

clean:
	rm -rf build build-asan build-cuda build-cuemu build-gpu

-include $(CLIENT_OBJ:.o=.d) $(LIB_OBJ:.o=.d) $(CMD_OBJ:.o=.d) $(REF_OBJ:.o=.d) $(CHECK_OBJ:.o=.d) $(TEST_BIN:=.d) $(CUDA_TEST_BIN:=.d)
-include $(SHIM_OBJ:.o=.d)
.SECONDARY:
