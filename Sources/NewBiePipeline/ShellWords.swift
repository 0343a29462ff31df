/// POSIX shell words: quoting for the command lines NewBie records (`newbie:command` in PNGs, the
/// commands in precision reports) and splitting them back, so a recorded command can be read as
/// well as run.
public enum ShellWords {
    /// `s` as one shell word: unchanged when it is plain ASCII with no shell meaning, otherwise in
    /// single quotes (an embedded ' becomes '\'').
    public static func quote(_ s: String) -> String {
        if !s.isEmpty && s.allSatisfy({ $0.isLetter || $0.isNumber || "-_./:=,+".contains($0) }) && s.unicodeScalars.allSatisfy(\.isASCII) { return s }
        return "'" + s.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }

    /// Splits a command line into words as a POSIX shell would for the quoting forms `quote` and
    /// people write: single quotes, double quotes (with \" \\ \$ \` escapes), backslash escapes,
    /// blanks between words. Throws on an unterminated quote or a trailing backslash.
    public static func split(_ line: String) throws -> [String] {
        var words: [String] = []
        var word = ""
        var inWord = false
        var chars = line.makeIterator()
        while let c = chars.next() {
            switch c {
            case " ", "\t", "\n":
                if inWord { words.append(word); word = ""; inWord = false }
            case "'":
                inWord = true
                var closed = false
                while let d = chars.next() { if d == "'" { closed = true; break }; word.append(d) }
                guard closed else { throw PipelineError("unterminated single quote in the command line") }
            case "\"":
                inWord = true
                var closed = false
                while let d = chars.next() {
                    if d == "\"" { closed = true; break }
                    if d == "\\" {
                        guard let e = chars.next() else { break }
                        if !"\"\\$`".contains(e) { word.append("\\") }
                        word.append(e)
                    } else { word.append(d) }
                }
                guard closed else { throw PipelineError("unterminated double quote in the command line") }
            case "\\":
                guard let e = chars.next() else { throw PipelineError("the command line ends with a backslash") }
                inWord = true
                if e != "\n" { word.append(e) }
            default:
                inWord = true
                word.append(c)
            }
        }
        if inWord { words.append(word) }
        return words
    }
}
