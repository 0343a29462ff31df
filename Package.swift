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
    ],
    targets: [
        // Hot scalar loops that need CPU features picked at run time (F16C conversions).
        .target(name: "CNewBieCPU"),
        // DType, Shape, Tensor, Device, the Backend protocol and the CPU backend.
        .target(name: "NewBieTensor", dependencies: ["CNewBieCPU"]),
        // Checkpoint formats: safetensors (and later GGUF), naming tables, scoped weight access.
        .target(name: "NewBieWeights", dependencies: ["NewBieTensor"]),
        .executableTarget(
            name: "newbie",
            dependencies: [
                "NewBieTensor", "NewBieWeights",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]),
        .testTarget(name: "NewBieTensorTests", dependencies: ["NewBieTensor", "NewBieWeights"]),
        .testTarget(name: "NewBieWeightsTests", dependencies: ["NewBieWeights"]),
    ],
    swiftLanguageModes: [.v5]
)
