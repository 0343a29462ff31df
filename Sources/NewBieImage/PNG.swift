import CPNG
import NewBieTensor
import Foundation

public struct PNGError: Error, CustomStringConvertible, LocalizedError {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
    public var errorDescription: String? { message }
}

/// PNG reading and writing through Debian's libpng.
public enum PNG {
    /// Refuse images with more pixels than this when reading (a corrupt or hostile header must not
    /// make us allocate gigabytes): 2^28 pixels, e.g. 16384 x 16384.
    public static let maxPixels = 1 << 28

    /// Writes `image` as an 8-bit RGB PNG with `text` as text chunks, in order (tEXt when the value
    /// is printable ASCII, iTXt (UTF-8) otherwise; keys must be printable ASCII), through
    /// `OutputFile`: `-` is standard output; otherwise a temporary file in the same folder is
    /// flushed to disk and renamed over `path` (symbolic links followed, anything but a regular
    /// file refused), so an interrupted run never leaves a half-written image at `path`.
    public static func write(_ image: RGBImage, to path: String, text: [(key: String, value: String)] = [],
                             compressionLevel: Int = 6) throws {
        for (k, _) in text {
            let bytes = Array(k.utf8)
            guard (1...79).contains(bytes.count), bytes.allSatisfy({ $0 >= 32 && $0 <= 126 }), !k.hasPrefix(" "), !k.hasSuffix(" "),
                  !k.contains("  ") else {
                throw PNGError("PNG text key \"\(k)\" must be 1-79 printable ASCII characters without leading, trailing or double spaces")
            }
        }
        for (k, v) in text where v.utf8.contains(0) {
            throw PNGError("PNG text value for \"\(k)\" contains a NUL character")
        }
        var status = newbie_png_status()
        var ok: Int32 = 0
        // C strings for the chunks stay alive for the duration of the call
        let cKeys = text.map { strdup($0.key) }, cValues = text.map { strdup($0.value) }
        defer { cKeys.forEach { free($0) }; cValues.forEach { free($0) } }
        var chunks = (0..<text.count).map { i in
            newbie_png_text_in(key: cKeys[i], text: cValues[i], itxt: isPrintableASCII(text[i].value) ? 0 : 1)
        }
        do {
            try OutputFile.write(path) { fd in
                // libpng writes through a FILE of its own on a duplicate of the descriptor
                let dupFD = dup(fd)
                guard dupFD >= 0, let fp = fdopen(dupFD, "wb") else {
                    if dupFD >= 0 { close(dupFD) }
                    throw PNGError("\(path): PNG not written: cannot open a stream (\(String(cString: strerror(errno))))")
                }
                image.pixels.withUnsafeBufferPointer { px in
                    chunks.withUnsafeMutableBufferPointer { ch in
                        ok = newbie_png_write_rgb8(fp, px.baseAddress, UInt32(image.width), UInt32(image.height),
                                                   ch.baseAddress, Int32(text.count), Int32(compressionLevel), &status)
                    }
                }
                var failure: String? = ok == 1 ? nil : message(status)
                if failure == nil && fflush(fp) != 0 { failure = "write failed: \(String(cString: strerror(errno)))" }
                if fclose(fp) != 0 && failure == nil { failure = "close failed: \(String(cString: strerror(errno)))" }
                if let f = failure { throw PNGError("\(path): PNG not written: \(f)") }
            }
        } catch let e as OutputError {
            throw PNGError("\(e.description) (PNG not written)")
        }
    }

    /// A decoded PNG: its pixels as 8-bit RGB, its text chunks in file order, and what it was.
    public struct Decoded: Sendable {
        public let image: RGBImage
        public let text: [(key: String, value: String)]
        public let sourceColorType: Int
        public let sourceBitDepth: Int
        public func textValue(_ key: String) -> String? { text.first { $0.key == key }?.value }
    }

    /// Reads a PNG of any colour type as 8-bit RGB (palette and grey expanded, 16-bit scaled,
    /// alpha dropped). Corrupt files (bad signature, CRC errors, truncated data) are refused with
    /// an error naming the file and what libpng found.
    public static func read(_ path: String) throws -> Decoded {
        guard let fp = fopen(path, "rb") else {
            throw PNGError("\(path): cannot open: \(String(cString: strerror(errno)))")
        }
        defer { fclose(fp) }
        var img = newbie_png_image()
        var status = newbie_png_status()
        guard newbie_png_read_rgb8(fp, UInt64(maxPixels), &img, &status) == 1 else {
            throw PNGError("\(path): not a valid PNG: \(message(status))")
        }
        defer { newbie_png_image_free(&img) }
        let (w, h) = (Int(img.width), Int(img.height))
        let pixels = Array(UnsafeBufferPointer(start: img.pixels, count: w * h * 3))
        var text: [(key: String, value: String)] = []
        for i in 0..<Int(img.ntexts) {
            let t = img.texts[i]
            // tEXt is Latin-1; iTXt is UTF-8 (libpng hands both over as bytes)
            text.append((latin1OrUTF8(t.key), latin1OrUTF8(t.text)))
        }
        return Decoded(image: RGBImage(width: w, height: h, pixels: pixels), text: text,
                       sourceColorType: Int(img.source_color_type), sourceBitDepth: Int(img.source_bit_depth))
    }

    static func message(_ s: newbie_png_status) -> String {
        var copy = s
        let text = withUnsafeBytes(of: &copy.message) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        return text.isEmpty ? "unknown libpng error" : text
    }

    /// True when every character is printable ASCII (or a newline): tEXt holds it as is.
    static func isPrintableASCII(_ s: String) -> Bool {
        s.unicodeScalars.allSatisfy { u in u.value == 10 || (u.value >= 32 && u.value <= 126) }
    }

    static func latin1OrUTF8(_ p: UnsafeMutablePointer<CChar>?) -> String {
        guard let p = p else { return "" }
        let bytes = Array(UnsafeBufferPointer(start: UnsafeRawPointer(p).assumingMemoryBound(to: UInt8.self), count: strlen(p)))
        if let s = String(validatingUTF8: p), s.utf8.count == bytes.count { return s }
        return String(bytes.map { Character(Unicode.Scalar($0)) })
    }
}
