// A tiny program whose build info names golang.org/x/text v0.3.6, for the
// Advisor's labelled image set.
package main

import (
	"fmt"

	"golang.org/x/text/language"
)

func main() {
	tag, err := language.Parse("en-GB")
	fmt.Println(tag, err)
}
