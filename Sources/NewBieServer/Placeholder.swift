import Hummingbird
import NewBieQueue
