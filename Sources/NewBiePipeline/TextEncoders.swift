import Foundation
import NewBieTensor
import NewBieText
import NewBieWeights

// The two text encoders, each loaded together with its tokenizer and checked against it. The
// text stage (`generate`, `encode`) and `encode-text` load them the same way through these.

/// Gemma 3 and its SentencePiece tokenizer.
public struct GemmaComponent {
    public let encoder: GemmaTextEncoder
    public let tokenizer: SentencePieceBPETokenizer
    public let tokenizerPath: String

    /// Loads the `gemma` slot of `paths` onto `placement`; the tokenizer comes from
    /// `paths.gemmaTokenizerPath`. A tokenizer larger than the checkpoint's vocabulary is an error.
    public static func load(paths: ModelPaths, placement: ModelPlacement) throws -> GemmaComponent {
        let path = try paths.require(.gemma)
        let tokenizerPath = try paths.gemmaTokenizerPath(gemma: path)
        let (tokenizer, encoder) = try Overlapped.run({ try SentencePieceBPETokenizer.load(tokenizerPath) },
                                                      alongside: { try GemmaTextEncoder.load(path: path, placement: placement) })
        guard tokenizer.vocabSize <= encoder.config.vocabSize else {
            throw PipelineError("--gemma-tokenizer \(tokenizerPath): \(tokenizer.vocabSize) tokens, but the Gemma checkpoint's vocabulary has \(encoder.config.vocabSize): tokenizer and checkpoint do not match")
        }
        return GemmaComponent(encoder: encoder, tokenizer: tokenizer, tokenizerPath: tokenizerPath)
    }
}

/// The Jina CLIP v2 text tower and its XLM-R Unigram tokenizer.
public struct JinaComponent {
    public let tower: JinaTextTower
    public let tokenizer: UnigramTokenizer
    public let tokenizerPath: String

    /// Loads the `jina` slot of `paths` onto `placement`; the layout (official, ComfyUI) and the
    /// config are read from the checkpoint, with `headDim` the one size its tensors cannot show.
    public static func load(paths: ModelPaths, placement: ModelPlacement, headDim: Int) throws -> JinaComponent {
        let path = try paths.require(.jina)
        let tokenizerPath = try paths.jinaTokenizerPath(jina: path)
        let source = try openWeights(path: path)
        let config = try JinaLayout.detect(source).inferConfig(source, headDim: headDim)
        let (tokenizer, tower) = try Overlapped.run({ try UnigramTokenizer(path: tokenizerPath) },
                                                    alongside: { try JinaTextTower(source: source, config: config, placement: placement) })
        guard tokenizer.pieces.count <= config.vocabSize else {
            throw PipelineError("--jina-tokenizer \(tokenizerPath): \(tokenizer.pieces.count) pieces, but the Jina checkpoint's vocabulary has \(config.vocabSize): tokenizer and checkpoint do not match")
        }
        return JinaComponent(tower: tower, tokenizer: tokenizer, tokenizerPath: tokenizerPath)
    }
}

/// Two pieces of loading at once: `background` (parsing a tokenizer: host CPU only) on another
/// thread while `foreground` (weights, which may drive the GPU) runs on this one. The tokenizer
/// files were found before the load started; a parse error is reported after the weights load.
final class OverlappedResult<A>: @unchecked Sendable { var result: Result<A, Error>? }

enum Overlapped {
    static func run<A, B>(_ background: @escaping () throws -> A, alongside foreground: () throws -> B) throws -> (A, B) {
        let box = OverlappedResult<A>()
        let done = DispatchSemaphore(value: 0)
        let work: @Sendable () -> Void = { [background] in
            box.result = Result { try background() }
            done.signal()
        }
        DispatchQueue.global(qos: .userInitiated).async(execute: work)
        let b: B
        do { b = try foreground() } catch { done.wait(); throw error }
        done.wait()
        return (try box.result!.get(), b)
    }
}
