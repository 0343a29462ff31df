import ArgumentParser
import NewBieTensor

@main
struct NewBie: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "newbie",
        abstract: "NewBie image Exp0.1 inference engine.",
        subcommands: [
            BenchCommand.self,
            BenchDiTCommand.self,
            BenchPipelineCommand.self,
            EncodeTextCommand.self,
            GenerateCommand.self, EncodeCommand.self, DenoiseCommand.self, DecodeCommand.self, MakeTinyModelCommand.self,
            GPUCheckCommand.self,
            InspectCommand.self,
            PromptCommand.self,
            ServeCommand.self, FitPreviewCommand.self,
            VAEDecodeCommand.self, VAEEncodeCommand.self, VAETilingCommand.self,
        ])
}
