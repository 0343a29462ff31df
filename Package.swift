// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "NewBie",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "newbie", targets: ["newbie"]),
        .library(name: "NewBieTensor", targets: ["NewBieTensor"]),
        .library(name: "NewBieWeights", targets: ["NewBieWeights"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "5.0.1"),
        // `newbie serve` (docs/SERVER.md): the job store on SQLite, the HTTP server.
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.8.0"),
        // The PostgreSQL queue of `newbie serve --queue postgres://` and `newbie worker`.
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.33.2"),
        // /metrics: counters and gauges through swift-metrics, exposed by swift-prometheus.
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
    ],
    targets: [
        // Hot scalar loops that pick CPU features at run time (F16C conversions, vector exp).
        .target(name: "CNewBieCPU"),
        // libpng from Debian (libpng-dev), for PNG reading and writing.
        .systemLibrary(name: "CPNG", pkgConfig: "libpng", providers: [.apt(["libpng-dev"])]),
        // DType, Shape, Tensor, Device, the Backend protocol and the CPU backend.
        .target(name: "NewBieTensor", dependencies: ["CNewBieCPU"]),
        // The CUDA backend: libcuda, cuBLASLt and NVRTC loaded with dlopen; kernels are CUDA C
        // resources compiled at run time for the running GPU.
        .target(name: "NewBieCUDA", dependencies: ["NewBieTensor"], resources: [.copy("Kernels")]),
        // Checkpoint formats: safetensors, GGUF, naming tables, scoped weight access.
        .target(name: "NewBieWeights", dependencies: ["NewBieTensor"]),
        // Tokenizers (Gemma SentencePiece-BPE, XLM-R Unigram), the text encoders, XML prompts
        // (Yams for the YAML prompt descriptions of `newbie prompt build`).
        .target(name: "NewBieText", dependencies: ["NewBieTensor", "NewBieWeights",
                                                   .product(name: "Yams", package: "Yams")]),
        // NextDiT, the FLUX VAE, samplers and guidance.
        .target(name: "NewBieDiffusion", dependencies: ["NewBieTensor", "NewBieWeights"]),
        // Images: PNG in and out, pixel <-> tensor conversion.
        .target(name: "NewBieImage", dependencies: ["NewBieTensor", "CPNG"]),
        // Full-reference image metrics (PSNR, SSIM, pixel-domain VIF) on 8-bit RGB images.
        .target(name: "NewBieMetrics", dependencies: ["NewBieImage"]),
        // The end-to-end pipeline (prompt -> text encoders -> DiT sampling -> VAE -> image) as
        // stages with plain values, model slots, the placement policy and device opening.
        .target(name: "NewBiePipeline", dependencies: ["NewBieTensor", "NewBieWeights", "NewBieText", "NewBieDiffusion", "NewBieImage", "NewBieCUDA"]),
        // What is not the product: random and tiny model writers, the whole-pipeline benchmark.
        .target(name: "NewBieHarness", dependencies: ["NewBieTensor", "NewBieWeights", "NewBieText", "NewBieDiffusion", "NewBieImage", "NewBiePipeline", "NewBieCUDA", "NewBieMetrics"]),
        // The job queue of `newbie serve`: job parameters and their limits, the job state machine,
        // the SQLite store (GRDB) with leases, and the worker that runs jobs on resident models.
        // No HTTP here, so it is tested without a server.
        .target(name: "NewBieQueue", dependencies: ["NewBieTensor", "NewBieText", "NewBieDiffusion", "NewBieImage", "NewBiePipeline",
                                                    .product(name: "GRDB", package: "GRDB.swift")]),
        // The PostgreSQL job store (postgres-nio): many API servers and `newbie worker` processes
        // on one queue; claims with FOR UPDATE SKIP LOCKED.
        .target(name: "NewBiePostgresQueue", dependencies: ["NewBieQueue",
                                                           .product(name: "PostgresNIO", package: "postgres-nio"),
                                                           .product(name: "Logging", package: "swift-log")]),
        // `newbie serve`: the HTTP API (Hummingbird 2), server-sent events, the web page and the
        // OpenAPI document (resources).
        .target(name: "NewBieServer", dependencies: ["NewBieQueue", "NewBiePostgresQueue", "NewBieText", "NewBiePipeline", "NewBieImage",
                                                     .product(name: "CoreMetrics", package: "swift-metrics"),
                                                     .product(name: "Prometheus", package: "swift-prometheus"),
                                                     .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                                                     .product(name: "Hummingbird", package: "hummingbird"),
                                                     .product(name: "Logging", package: "swift-log"),
                                                     .product(name: "HTTPTypes", package: "swift-http-types")],
                resources: [.copy("Static")]),
        .executableTarget(
            name: "newbie",
            dependencies: [
                "NewBieTensor", "NewBieWeights", "NewBieText", "NewBieDiffusion", "NewBieImage", "NewBieCUDA", "NewBiePipeline", "NewBieHarness", "NewBieMetrics",
                "NewBieQueue", "NewBiePostgresQueue", "NewBieServer",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]),
        // Shared test helpers: fixture paths, relative-error comparisons.
        .target(name: "NewBieTestSupport", dependencies: ["NewBieTensor", "NewBieWeights"],
                path: "Tests/NewBieTestSupport"),
        .testTarget(name: "NewBieTensorTests", dependencies: ["NewBieTensor", "NewBieWeights", "NewBieTestSupport"]),
        .testTarget(name: "NewBieWeightsTests", dependencies: ["NewBieWeights", "NewBieTestSupport"]),
        .testTarget(name: "NewBieTextTests", dependencies: ["NewBieText", "NewBieTestSupport"]),
        .testTarget(name: "NewBieDiffusionTests", dependencies: ["NewBieDiffusion", "NewBieTestSupport"]),
        .testTarget(name: "NewBieImageTests", dependencies: ["NewBieImage", "NewBieTestSupport"]),
        .testTarget(name: "NewBieMetricsTests", dependencies: ["NewBieMetrics", "NewBieImage", "NewBieTestSupport"]),
        .testTarget(name: "NewBieCUDATests", dependencies: ["NewBieCUDA", "NewBieTensor", "NewBieTestSupport"]),
        // The built `newbie` binary run as a user would (bad input, outputs, exit codes).
        .testTarget(name: "NewBieCLITests", dependencies: ["NewBieImage", "NewBieWeights", "NewBieTestSupport"]),
        .testTarget(name: "NewBiePipelineTests", dependencies: ["NewBiePipeline", "NewBieHarness", "NewBieImage", "NewBieMetrics", "NewBieWeights", "NewBieTestSupport"]),
        .testTarget(name: "NewBieQueueTests", dependencies: ["NewBieQueue", "NewBiePipeline", "NewBieHarness", "NewBieImage", "NewBieTestSupport"]),
        .testTarget(name: "NewBiePostgresQueueTests", dependencies: ["NewBiePostgresQueue", "NewBieQueue", "NewBieHarness", "NewBieTestSupport"]),
        .testTarget(name: "NewBieServerTests", dependencies: ["NewBieServer", "NewBieQueue", "NewBieHarness", "NewBieImage", "NewBieTestSupport",
                                                          .product(name: "Logging", package: "swift-log")]),
    ],
    swiftLanguageModes: [.v5]
)
