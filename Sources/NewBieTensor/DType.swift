/// Element types a tensor can be stored in.
///
/// The floating types are the compute types; every op computes in Float32 and rounds its result
/// to the output's storage type (round to nearest even), so a reduced-precision tensor overflows
/// or loses bits exactly where a GPU that stores it in that type would.
/// Integer and bool types carry token ids and masks. Block-quantised weight formats (GGUF Q8_0,
/// Q4_K, ...) are `QuantFormat`s, stored as raw bytes beside a logical shape.
public enum DType: String, Sendable, CaseIterable, CustomStringConvertible {
    case f64, f32, f16, bf16
    case i64, i32, i16, i8, u8, bool

    /// Bytes per element.
    public var byteSize: Int {
        switch self {
        case .f64, .i64: return 8
        case .f32, .i32: return 4
        case .f16, .bf16, .i16: return 2
        case .i8, .u8, .bool: return 1
        }
    }

    public var isFloatingPoint: Bool {
        switch self {
        case .f64, .f32, .f16, .bf16: return true
        default: return false
        }
    }

    /// The name safetensors uses for this type.
    public var safetensorsName: String {
        switch self {
        case .f64: return "F64"
        case .f32: return "F32"
        case .f16: return "F16"
        case .bf16: return "BF16"
        case .i64: return "I64"
        case .i32: return "I32"
        case .i16: return "I16"
        case .i8: return "I8"
        case .u8: return "U8"
        case .bool: return "BOOL"
        }
    }

    public init?(safetensorsName name: String) {
        guard let t = DType.allCases.first(where: { $0.safetensorsName == name }) else { return nil }
        self = t
    }

    /// Parses the names users type on the command line (`fp32`, `bf16`, `half`, ...).
    public init?(userName: String) {
        switch userName.lowercased() {
        case "fp32", "f32", "float32", "float": self = .f32
        case "fp16", "f16", "float16", "half": self = .f16
        case "bf16", "bfloat16": self = .bf16
        case "fp64", "f64", "float64", "double": self = .f64
        default: return nil
        }
    }

    public var description: String { rawValue }
}

/// Block-quantised formats (GGUF). Each block holds `blockSize` logical values in `blockBytes` bytes.
public struct QuantFormat: Hashable, Sendable, CustomStringConvertible {
    public let name: String
    public let blockSize: Int
    public let blockBytes: Int
    public init(name: String, blockSize: Int, blockBytes: Int) {
        self.name = name; self.blockSize = blockSize; self.blockBytes = blockBytes
    }
    public var description: String { name }
    public func byteCount(elements: Int) -> Int? {
        guard elements % blockSize == 0 else { return nil }
        return elements / blockSize * blockBytes
    }
}
