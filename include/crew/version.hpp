// The crew version, for code that needs to check it at compile time.
#pragma once

#define CREW_VERSION_MAJOR 0
#define CREW_VERSION_MINOR 1
#define CREW_VERSION_PATCH 0
/// "major.minor.patch"
#define CREW_VERSION_STRING "0.1.0"
